"""Terminal key rotation (sync_server/key_rotation.py) against the real server process, on each store.

A POS is moved to a new key through its own syncs: the new keys arrive sealed to a one-time key of the
request, are kept in the terminal's data directory before use, and the old key is refused once the
server has seen the new one - refusals still signed so the terminal can tell they are real. A lost
answer costs nothing, a forged one is ignored, and a restarted or re-flashed terminal keeps working.
"""
import io
import json
import os
import stat

import cbor2
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from firmware.apps import provisioning
from firmware.apps.pos_terminal import PosTerminal
from firmware.core import protocol, sam, water_grants
from firmware.core import wallets as wallet_rules
from reader_drivers.base import open_reader
from sync_server import db as dbmod, key_rotation, registry, water_holds
from server_process import running_server

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

OLD_COUNTER = 2 ** 50       # above any clock-based counter of the terminal under test


@pytest.fixture
def site(tmp_path):
    with running_server(tmp_path / "server") as server:
        conn = server.connect()
        try:
            yield server, conn
        finally:
            conn.close()


def key_columns(conn, terminal_id):
    return conn.execute("SELECT key_version, next_key_version, key_rotated_ms IS NOT NULL FROM terminals "
                        "WHERE id = ?", (terminal_id,)).fetchone()


def rotate(server, terminal_id):
    done = server.ykt("fleet", "rotate-key", "--terminal", str(terminal_id))
    assert done.returncode == 0, done.stderr
    return done.stdout


def open_sealed(command, one_time, terminal_id):
    shared = one_time.exchange(X25519PublicKey.from_public_bytes(command["server_public"]))
    plain = AESGCM(key_rotation.sealing_key(shared)).decrypt(command["nonce"], command["sealed"],
                                                            protocol.rekey_aad(terminal_id, command["key_version"]))
    return cbor2.loads(plain)


def public_bytes(private):
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_pos_moves_to_its_new_key_and_the_old_one_stops(site, tmp_path):
    server, conn = site
    raw = server.add_terminal()
    terminal_id, document = raw.terminal_id, raw.document
    old_sam = raw.sam
    data_dir = str(tmp_path / "terminal")
    pos = PosTerminal(document, data_dir, open_reader("sim:"), out=io.StringIO())
    try:
        assert pos.sync_client.sync_once().online
        said = rotate(server, terminal_id)
        assert "第 2 版" in said
        assert key_columns(conn, terminal_id) == (1, 2, False)

        # The next sync (old key) brings the new keys; they are on disk, owner-only, before any use.
        assert pos.sync_client.sync_once().online
        assert pos.sync_client.key_version == 2
        kept = os.path.join(data_dir, provisioning.ROTATED_KEYS_FILE)
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
        with open(kept, encoding="utf-8") as handle:
            assert json.load(handle)["sam_keys"]["terminal"] == sam.terminal_key(server.master_key(), terminal_id,
                                                                                 2).hex()
        assert key_columns(conn, terminal_id) == (1, 2, False)     # the server has not seen it used yet

        # The first sync signed with the new key retires the old one.
        assert pos.sync_client.sync_once().online
        assert key_columns(conn, terminal_id) == (2, None, True)
    finally:
        pos.close()

    # Whoever still holds the old key is refused, and the refusal is signed with that key, so a
    # terminal that lost its new keys can tell the refusal is real and says what to do.
    response = raw.post(raw.body(), counter=OLD_COUNTER, key_version=1)
    assert response.status_code == 401
    assert cbor2.loads(response.content)["error"] == "key_retired"
    assert "重新刷机" in cbor2.loads(response.content)["message"]
    assert protocol.answer_is_authentic(old_sam, protocol.SYNC_PATH, terminal_id, OLD_COUNTER, 401,
                                        response.content, response.headers.get(protocol.HEADER_ANSWER_MAC))
    response = raw.post(raw.body(), counter=OLD_COUNTER + 1)          # old key, no version said
    assert (response.status_code, cbor2.loads(response.content)["error"]) == (401, "bad_mac")

    # Restarted from the same (old) provisioning file: the kept keys are used.
    pos = PosTerminal(document, data_dir, open_reader("sim:"), out=io.StringIO())
    try:
        assert pos.sync_client.key_version == 2
        assert pos.sync_client.sync_once().online
    finally:
        pos.close()
    # Flashed again: the new provisioning file holds version 2 itself, and works on a fresh data directory.
    fresh = registry.provisioning_document(conn, server.master_key(), terminal_id, server.url)
    assert fresh["key_version"] == 2
    pos = PosTerminal(fresh, str(tmp_path / "reflashed"), open_reader("sim:"), out=io.StringIO())
    try:
        assert pos.sync_client.sync_once().online
    finally:
        pos.close()


def test_every_sync_brings_a_new_sealed_copy_only_its_own_key_opens(site):
    server, conn = site
    raw = server.add_terminal(category=wallet_rules.CATEGORY_WATER)
    assert raw.sync()["acked_seq"] == 0
    assert "commands" not in raw.sync(rekey_public=public_bytes(X25519PrivateKey.generate())) \
        or not any(command["op"] == "rekey" for command in raw.sync()["commands"])     # nothing pending
    rotate(server, raw.terminal_id)
    firsts = []
    for _ in range(2):                      # the first answer "lost": the next sync seals a new copy
        one_time = X25519PrivateKey.generate()
        answer = raw.sync(rekey_public=public_bytes(one_time))
        [command] = [command for command in answer["commands"] if command["op"] == "rekey"]
        keys = open_sealed(command, one_time, raw.terminal_id)
        master = server.master_key()
        # a dispenser's water key rotates with its sync key: the phones' grants use the new one after
        assert keys == {"terminal": sam.terminal_key(master, raw.terminal_id, 2),
                        "water": sam.water_key(master, raw.terminal_id, 2)}
        firsts.append(command["sealed"])
        with pytest.raises(InvalidTag):     # a listener with the old key and another one-time key
            open_sealed(command, X25519PrivateKey.generate(), raw.terminal_id)
    assert firsts[0] != firsts[1]
    assert key_columns(conn, raw.terminal_id) == (1, 2, False)     # nothing retired until the new key is used
    new_sam = sam.SoftwareSAM({"terminal": sam.terminal_key(server.master_key(), raw.terminal_id, 2)})
    response = raw.post(raw.body(), mac_sam=new_sam, key_version=2)
    assert response.status_code == 200
    assert key_columns(conn, raw.terminal_id) == (2, None, True)
    water = registry.provisioning_document(conn, server.master_key(), raw.terminal_id, server.url)["sam_keys"]
    assert water["water"] == sam.water_key(server.master_key(), raw.terminal_id, 2).hex()


@pytest.mark.stores("sqlite")   # the terminal's side: the store adds nothing
def test_a_forged_or_unwanted_rekey_changes_nothing(site, tmp_path):
    server, conn = site
    raw = server.add_terminal()
    data_dir = str(tmp_path / "terminal")
    pos = PosTerminal(raw.document, data_dir, open_reader("sim:"), out=io.StringIO())
    client = pos.sync_client
    rotate(server, raw.terminal_id)
    try:
        one_time = X25519PrivateKey.generate()
        good = key_rotation.seal_command(server.master_key(), raw.terminal_id, 2, 1, public_bytes(one_time))
        tampered = dict(good, sealed=good["sealed"][:-1] + bytes([good["sealed"][-1] ^ 1]))
        other_terminal = key_rotation.seal_command(server.master_key(), raw.terminal_id + 1, 2, 1,
                                                   public_bytes(one_time))
        other_terminal["key_version"] = 2
        older = dict(good, key_version=1)
        for command in (tampered, other_terminal, older, {"op": "rekey", "key_version": 2}):
            client._take_rekey({"commands": [command]}, one_time)
            assert client.key_version == 1
            assert not os.path.exists(os.path.join(data_dir, provisioning.ROTATED_KEYS_FILE))
        assert client.sync_once().online                    # still on the old key
        client._take_rekey({"commands": [good]}, one_time)  # a real one is taken
        assert client.key_version == 2
        assert client.sync_once().online
        assert key_columns(conn, raw.terminal_id) == (2, None, True)
    finally:
        pos.close()


def test_versions_never_given_out_and_unknown_terminals_are_refused(site):
    server, conn = site
    raw = server.add_terminal()
    for version in ("2", "0", "x", "99999999"):
        response = raw.http.post(protocol.SYNC_PATH, content=raw.body(), headers=dict(
            protocol.auth_headers(raw.sam, "POST", protocol.SYNC_PATH, raw.terminal_id, 5, raw.body()),
            **{protocol.HEADER_KEY_VERSION: version, "Content-Type": protocol.CONTENT_TYPE}))
        assert response.status_code == 401, version
    assert key_columns(conn, raw.terminal_id) == (1, None, False)
    refused = server.ykt("fleet", "rotate-key", "--terminal", "999")
    assert refused.returncode == 6 and "终端 999 不存在" in refused.stderr
    registry.revoke_terminal(conn, raw.terminal_id)
    refused = server.ykt("fleet", "rotate-key", "--terminal", str(raw.terminal_id))
    assert refused.returncode == 2 and "终端 %d 不存在或已停用" % raw.terminal_id in refused.stderr
    assert key_columns(conn, raw.terminal_id) == (1, None, False)


def test_receipts_under_the_new_or_just_retired_water_key_are_taken(site):
    """A dispenser signs receipts with its new water key as soon as it has it (before the server has
    seen it sync), and a phone may hand in a receipt of a session ended just before the rotation."""
    server, conn = site
    raw = server.add_terminal(category=wallet_rules.CATEGORY_WATER)
    master = server.master_key()

    def receipt(version):
        mac = water_grants.grant_mac_fn(sam.water_key(master, raw.terminal_id, version))
        return water_grants.encode_receipt(mac, water_grants.Receipt(raw.terminal_id, 41, 3, 500, 15, 300, 20000,
                                                                     water_grants.END_BUTTON))

    def taken(version):
        try:
            return water_holds.check_receipt(conn, master, receipt(version)).grant_id == 41
        except water_grants.WaterMessageError as error:
            assert error.code == water_grants.REFUSED_FORGED
            return False

    assert (taken(1), taken(2)) == (True, False)
    rotate(server, raw.terminal_id)
    assert (taken(1), taken(2), taken(3)) == (True, True, False)        # pending: both
    new_sam = sam.SoftwareSAM({"terminal": sam.terminal_key(master, raw.terminal_id, 2)})
    assert raw.post(raw.body(), mac_sam=new_sam, key_version=2).status_code == 200
    assert (taken(1), taken(2)) == (True, True)                         # just retired: still taken
    with dbmod.transaction(conn):
        conn.execute("UPDATE terminals SET key_rotated_ms = key_rotated_ms - ? WHERE id = ?",
                     (water_holds.RETIRED_KEY_RECEIPTS_MS, raw.terminal_id))
    assert (taken(1), taken(2)) == (False, True)                        # an hour on: refused
