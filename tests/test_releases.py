"""Firmware updates through sync (sync_server/releases.py, the sync answer's update command, the
firmware download, the shell taking it into the A/B slots): the real server process (SQLite and
PostgreSQL), release keys and bundles made by tools/release.py, and the POS terminal as a process run
by the slots' supervisor. A release rolled out to one terminal reaches it at its next sync; it installs
on trial, comes back on the new version, syncs and is confirmed, and its journal is intact. Terminals
outside a rollout are not offered it; a bundle not signed by the site's key, altered, or of an unknown
release is refused at the desk and at the download.
"""
import io
import json
import os
import signal
import subprocess
import sys
import zipfile

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.apps import bundles
from firmware.apps.slots import Slots
from firmware.apps.store import TerminalStore
from firmware.core import wallets
from sync_server import registry, releases
from sync_server.terminal_api import FIRMWARE_PATH

from field_cards import card_image
from server_process import running_server
from test_slots import UID, health_on_server, records_on_server, run_script, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import release  # noqa: E402


def with_release_key(server, tmp_path):
    """(server, release key, its public hex, dist directory) with the key registered."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw().hex()
    done = server.ykt("fleet", "release-key-add", "--key", public)
    assert done.returncode == 0, done.stderr
    return server, key, public, str(tmp_path / "dist")


@pytest.fixture
def site(fresh_server, tmp_path):
    return with_release_key(fresh_server, tmp_path)


@pytest.fixture
def sqlite_site(tmp_path):
    """As `site`, on SQLite only: the end-to-end update is the terminal's, whatever the server's store
    (the offers, downloads and refusals are tested on both)."""
    with running_server(tmp_path / "server", database=None) as server:
        yield with_release_key(server, tmp_path)


def provision_till(server, tmp_path):
    """A POS registered after the key (its provisioning file carries it), a card with money."""
    client = server.add_terminal()
    client.close()
    provision = tmp_path / "till.json"
    provision.write_text(json.dumps(client.document))
    _account_id, identity = server.add_cardholder("更新", "R0001", 5000, UID, set_initial_pin=False)
    card_image(server.master_key(), identity, "更新", UID, tmp_path / "card.card")
    return client, str(provision), str(tmp_path / "card.card")


def test_a_rollout_reaches_a_running_pos_through_sync(sqlite_site, tmp_path):
    server, key, public, dist = sqlite_site
    client, provision, card_path = provision_till(server, tmp_path)
    assert json.loads(open(provision).read())["release_keys"] == [public]
    data_dir = str(tmp_path / "terminal")
    (decision,) = [line for line in run_script(provision, data_dir, [{"sync": True},
                                                                      {"amount_fen": 700, "card": card_path}])
                   if line["type"] == "decision"]
    assert decision["accepted"]
    slots = Slots(str(tmp_path / "slots"))
    slots.first_install(release.build("pos", "1.2.0", key, dist), "pos", bundles.public_keys([public]))
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "firmware.apps.slots", "--root", slots.root, "--data-dir", data_dir, "--trial-s", "60",
         "--", "terminal", "--provision", provision, "--data-dir", data_dir, "--serve", "--sync-interval-ms", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        until("the running version reported", lambda: health_on_server(server, client.terminal_id).get("firmware")
              == "ykt-pos/1.2.0")
        bundle = release.build("pos", "1.3.0", key, dist)
        added = server.ykt("fleet", "release-add", "--file", bundle)
        assert added.returncode == 0, added.stderr
        release_id = int(added.stdout.split("编号")[1].strip())
        rolled = server.ykt("fleet", "rollout", "--release", str(release_id), "--terminal", str(client.terminal_id))
        assert rolled.returncode == 0, rolled.stderr
        until("the new version confirmed", lambda: slots.state()["version"] == "1.3.0"
              and slots.state()["trial"] is None)
        until("the new version reported", lambda: health_on_server(server, client.terminal_id).get("firmware")
              == "ykt-pos/1.3.0")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        output, _ = supervisor.communicate(timeout=90)
    assert [entry["event"] for entry in slots.state()["history"]] == ["installed", "trial", "confirmed"], output
    assert records_on_server(server, client.terminal_id) == [(1,)]
    store = TerminalStore(os.path.join(data_dir, "terminal.db"))
    assert [(seq, acked) for seq, _raw, acked in store.journal()] == [(1, 1)]
    store.close()
    listed = json.loads(server.ykt("fleet", "releases", "--json").stdout)
    assert [(row["kind"], row["version"], row["rollouts"]) for row in listed] == [("pos", "1.3.0", 1)]


def test_only_terminals_a_rollout_names_are_offered_it(site, tmp_path):
    server, key, _public, dist = site
    conn = server.connect()
    try:
        canteen = registry.add_merchant(conn, "一食堂", "canteen 1", wallets.CATEGORY_CANTEEN)
        other = registry.add_merchant(conn, "二食堂", "canteen 2", wallets.CATEGORY_CANTEEN)
        water = registry.add_merchant(conn, "开水房", "boiler room", wallets.CATEGORY_WATER)
        first, second = registry.register_terminal(conn, canteen), registry.register_terminal(conn, canteen)
        elsewhere, dispenser = registry.register_terminal(conn, other), registry.register_terminal(conn, water)
        release_id = releases.add_release(conn, server.data_dir, release.build("pos", "1.3.0", key, dist))

        def offered(terminal_id, category=wallets.CATEGORY_CANTEEN, firmware="ykt-pos/1.2.0"):
            offer = releases.offer_for(conn, terminal_id, category, firmware)
            return offer and offer["version"]
        assert [offered(t) for t in (first, second, elsewhere)] == [None, None, None]
        releases.add_rollout(conn, release_id, terminal_id=first)
        assert [offered(t) for t in (first, second, elsewhere)] == ["1.3.0", None, None]
        releases.add_rollout(conn, release_id, merchant_id=canteen)
        assert [offered(t) for t in (first, second, elsewhere)] == ["1.3.0", "1.3.0", None]
        releases.add_rollout(conn, release_id)
        assert [offered(t) for t in (first, second, elsewhere)] == ["1.3.0"] * 3
        assert offered(dispenser, wallets.CATEGORY_WATER, "ykt-dispenser/1.0.0") is None     # another kind
        assert offered(first, firmware="ykt-pos/1.3.0") is None and offered(first, firmware="ykt-pos/2.0.0") is None
        assert offered(first, firmware="ykt-pos/0.1") is None        # a development build: never updated
        with pytest.raises(Exception) as unknown:
            releases.add_rollout(conn, 999)
        assert getattr(unknown.value, "exit_code", None) == 6
    finally:
        conn.close()


def test_bundles_the_site_did_not_sign_are_refused_at_the_desk(site, tmp_path):
    server, key, _public, dist = site
    stranger = release.build("pos", "1.3.0", Ed25519PrivateKey.generate(), str(tmp_path / "stranger"))
    done = server.ykt("fleet", "release-add", "--file", stranger)
    assert done.returncode == 7 and "签名无效" in done.stderr
    good = release.build("pos", "1.3.1", key, dist)
    altered = str(tmp_path / "altered.zip")
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(altered, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            target.writestr(info, data + b"#" if info.filename.endswith("pos.py") else data)
    done = server.ykt("fleet", "release-add", "--file", altered)
    assert done.returncode == 7 and "不符" in done.stderr
    assert server.ykt("fleet", "release-add", "--file", str(tmp_path / "none.zip")).returncode == 4
    assert server.ykt("fleet", "rollout", "--release", "77", "--all").returncode == 6
    assert server.ykt("fleet", "release-key-add", "--key", "abc").returncode == 7
    assert server.ykt("fleet", "release-add", "--file", good).returncode == 0
    again = server.ykt("fleet", "release-add", "--file", good)
    assert again.returncode == 2 and "已登记" in again.stderr


def test_a_release_is_downloaded_only_by_terminals_offered_it(site):
    server, key, _public, dist = site
    offered_to, not_offered = server.add_terminal(), server.add_terminal()
    conn = server.connect()
    try:
        release_id = releases.add_release(conn, server.data_dir, release.build("pos", "1.3.0", key, dist))
        releases.add_rollout(conn, release_id, terminal_id=offered_to.terminal_id)
    finally:
        conn.close()
    body = cbor2.dumps({"release_id": release_id})
    answer = offered_to.post(body, path=FIRMWARE_PATH)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/zip"
    assert zipfile.is_zipfile(io.BytesIO(answer.content))
    refused = not_offered.post(body, path=FIRMWARE_PATH)
    assert refused.status_code == 404 and cbor2.loads(refused.content)["error"] == "no_release"
    replayed = offered_to.post(body, path=FIRMWARE_PATH, counter=offered_to.counter)
    assert replayed.status_code == 409
    for client in (offered_to, not_offered):
        client.close()
