"""`ykt phone paycode` as a developer runs it against a real server: enabling refuses the initial PIN
and then certifies a key made on this phone, `show` prints a code (and its QR as a PNG) that the
server verifies, `paid` moves on to the next code, `--offline` needs no server, `stop` revokes the
credential; every mistake is one readable line and exit code 2, never a traceback."""
import json
import os
import subprocess
import sys

import pytest

from firmware.core import card_layout, paycode as codes
from simulators.phone import PhoneApp
from simulators.sticker_scan import read_qr_texts
from sync_server import db as dbmod, paycode, pin_rules, registry

pytestmark = pytest.mark.stores("sqlite")      # the server's side is tests/test_paycode.py's, on both stores
_TIMEOUT_S = 60


def _phone(profile, *argv, lang="zh"):
    return subprocess.run([sys.executable, "-m", "ykt", "phone", "--profile", str(profile), "--lang", lang] + list(argv),
                          capture_output=True, text=True, timeout=_TIMEOUT_S)


def test_enable_show_pay_and_stop_from_the_command_line(live_server, tmp_path):
    conn = live_server.connect()
    try:
        _person, account_id = registry.add_person(conn, "码命令", card_layout.HOLDER_STUDENT,
                                                  id_number="110101199004040099", staff_number="PC0001")
        registry.recharge(conn, account_id, 5000)
    finally:
        conn.close()
    initial = pin_rules.initial_pin("110101199004040099", "PC0001")
    profile = tmp_path / "phone.json"
    bound = _phone(profile, "bind", "--server", live_server.url, "--name", "码命令", "--staff-number", "PC0001",
                   "--pin", initial)
    assert bound.returncode == 0, bound.stderr

    refused = _phone(profile, "paycode", "enable", "--pin", initial)
    assert refused.returncode == 2 and "初始密码" in refused.stderr and "Traceback" not in refused.stderr
    saved = json.loads(profile.read_text())
    app = PhoneApp(live_server.url, saved["app_user_id"])
    app.token, app.account_id = saved["token"], saved["account_id"]
    app.change_pin(initial, "135791")
    app.close()
    no_code = _phone(profile, "paycode", "show", lang="en")
    assert no_code.returncode == 2 and "not enabled" in no_code.stderr

    enabled = _phone(profile, "paycode", "enable", "--pin", "135791")
    assert enabled.returncode == 0, enabled.stderr
    assert oct(os.stat(profile).st_mode & 0o777) == "0o600"

    picture = tmp_path / "code.png"
    shown = _phone(profile, "paycode", "show", "--png", str(picture), "--json")
    assert shown.returncode == 0, shown.stderr
    line = json.loads(shown.stdout.strip().splitlines()[-1])
    assert line["qr_version"] == 10 and read_qr_texts(str(picture)) == [line["code"]]
    conn = live_server.connect()
    try:
        code = paycode.verify_code(conn, live_server.master_key(), line["code"], dbmod.now_ms())
        assert code.cert.account_id == account_id and code.counter == 0
    finally:
        conn.close()

    assert _phone(profile, "paycode", "paid").returncode == 0
    offline = tmp_path / "offline.json"           # the same phone with its server gone
    saved = json.loads(profile.read_text())
    saved["server"] = "http://127.0.0.1:9"
    offline.write_text(json.dumps(saved))
    offline.chmod(0o600)
    away = _phone(offline, "paycode", "show", "--offline", "--json")
    assert away.returncode == 0, away.stderr
    assert codes.parse(json.loads(away.stdout.strip().splitlines()[-1])["code"]).counter == 1
    gone = _phone(offline, "paycode", "show", "--json")         # tries the server, falls back to offline
    assert gone.returncode == 0 and "离线" in gone.stderr

    stopped = _phone(profile, "paycode", "stop")
    assert stopped.returncode == 0, stopped.stderr
    conn = live_server.connect()
    try:
        assert conn.execute("SELECT status FROM paycode_credentials WHERE id = ?",
                            (code.cert.credential_id,)).fetchone()[0] == paycode.REVOKED
    finally:
        conn.close()
    for text, exit_code in (("{not json", 7), ("{}", 2), ("[]", 7)):     # not a profile; one without a code
        broken = tmp_path / "broken.json"
        broken.write_text(text)
        bad = _phone(broken, "paycode", "show")
        assert bad.returncode == exit_code and "Traceback" not in bad.stderr, (text, bad.stderr)
