"""schemathesis fuzzes the cardholder API (/api/v1) against its own OpenAPI document.

The server runs as a real subprocess (`ykt server`); the document is the one it serves. Every operation
gets up to MAX_EXAMPLES generated requests (valid and invalid ones, derandomized so a run repeats;
YKT_API_FUZZ_EXAMPLES asks for more), sent with the bearer token of a seeded cardholder bound through
/bind. Half of the generated account ids and PINs are replaced by the holder's own, so the requests
reach past the 403 into the services. Each answer must not be a 5xx, must have a documented status
and content type, and must match the documented body.
"""
import os

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode

from sync_server import openapi
from test_cardholder_api import Holder

MAX_EXAMPLES = int(os.environ.get("YKT_API_FUZZ_EXAMPLES", "25"))
CHECKS = [getattr(schemathesis.checks, name) for name in (
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")]
# One test per documented operation, from the same module the server serves the document from (the
# pytest plugin's lazy fixture loader does not run under pytest 9, so operations are listed here).
# Negative cases (invalid on purpose) only where there is something to make invalid.
OPERATIONS = [(method.upper(), path, mode) for path, item in openapi.document()["paths"].items()
              for method, operation in item.items()
              for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
              if mode is GenerationMode.POSITIVE or operation["parameters"] or "requestBody" in operation]


@pytest.fixture(scope="module")
def holder(live_server):
    return Holder(live_server, balance_fen=50000, legacy_fen=1000)


@pytest.fixture(scope="module")
def api_schema(live_server):
    return schemathesis.openapi.from_url(live_server.url + "/api/v1/openapi.json")


@pytest.fixture(scope="module")
def signing_out(live_server):
    """A holder of its own for /sign-out (its first case ends its token; the rest are 401), so signing
    out does not end the token the other operations use."""
    return Holder(live_server)


@pytest.mark.parametrize("method, path, mode", OPERATIONS,
                         ids=["%s %s %s" % (method, path, mode.value) for method, path, mode in OPERATIONS])
def test_every_answer_is_documented(api_schema, live_server, holder, signing_out, method, path, mode):
    operation = api_schema[path][method]
    answered = {}

    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy(mode))
    def call(case):
        account_id = (case.path_parameters or {}).get("account_id")
        if type(account_id) is int and account_id % 2 == 0:
            case.path_parameters["account_id"] = holder.account_id
        body = case.body if isinstance(case.body, dict) else {}
        for field in ("pin", "old_pin"):
            if isinstance(body.get(field), str) and len(body[field]) % 2 == 0:
                body[field] = holder.pin
        token = (signing_out if path == "/sign-out" else holder).http.headers["Authorization"]
        response = case.call_and_validate(base_url=live_server.url + "/api/v1", headers={"Authorization": token},
                                          checks=CHECKS, timeout=60)
        answered[response.status_code] = answered.get(response.status_code, 0) + 1
        if path.endswith("/pin") and response.status_code == 200:
            holder.pin = body["new_pin"]
    call()
    print(method, path, mode.value, "answered", sorted(answered.items()))
