"""Activation units' records booked by the old serial, once (sync_server/legacy_migration.py), over the
real server process on SQLite and PostgreSQL: tickets online and as a paged cache, students' card
money into the legacy wallet, registered 小钱包 into the water wallet, teachers' main purse left to
the export; the same serial from a second unit, a replayed batch or the hall books nothing more; a
record naming an unknown serial or another card is stored unbooked with its reason; the hall
replaces a broken card free and registers a late 小钱包; old money in = credited + outstanding."""
import json
import time

import cbor2
import pytest

from firmware.core import protocol, records, wallets as wallet_rules
from server_process import decode_answer
from simulators import legacy_campus
from sync_server import ledger, legacy_migration as migration, registry
from sync_server.ledger_store import SqliteStore

OLD_KEY = legacy_campus.old_master_key(5)


@pytest.fixture(scope="module")
def campus(tmp_path_factory, live_server):
    """The seeded campus imported once into the module's server; its export rows by serial."""
    out = tmp_path_factory.mktemp("campus") / "old"
    legacy_campus.generate(str(out), 60, 5)
    people_csv = (out / legacy_campus.PEOPLE_CSV).read_text(encoding="utf-8")
    water_csv = (out / legacy_campus.WATER_CSV).read_text(encoding="utf-8")
    conn = live_server.connect()
    try:
        migration.import_export(conn, people_csv, water_csv)
    finally:
        conn.close()
    people, water = migration.parse_export(people_csv, water_csv)
    by_serial = {}
    for entry in people:
        by_serial.setdefault(entry["serial"], []).append(entry)
    return {serial: (entries[0], water.get(serial)) for serial, entries in by_serial.items() if len(entries) == 1
            and not entries[0]["lost"]}


@pytest.fixture(scope="module")
def unit(live_server):
    return live_server.add_terminal(category=wallet_rules.CATEGORY_ACTIVATION, legacy_master_key=OLD_KEY)


def _ask(client, path, message):
    return decode_answer(client.post(cbor2.dumps(message), path=path))


def _ticket(client, serial, uid=b"\x01\x02\x03\x04"):
    return _ask(client, "/api/terminal/v1/activation-ticket", {"serial": serial, "uid": uid})


def _record(client, ticket, main_fen, water_fen):
    seq = client.next_seq
    client.next_seq += 1
    return records.encode_activation(client.terminal_id, seq, int(time.time() * 1000), ticket["card_number"],
                                     ticket["account_id"], ticket["generation"], ticket["category"], ticket["serial"],
                                     main_fen, 7, water_fen, 3)


def _pick(campus, category, registered):
    for serial, (entry, water_fen) in sorted(campus.items()):
        if entry["category"] == category and (water_fen is not None) == registered and entry["balance_fen"] > 0:
            return serial, entry, water_fen
    raise AssertionError("the seeded campus has no such card")


def _balances(live_server, account_id):
    conn = live_server.connect()
    try:
        return registry.balances_of(conn, account_id)
    finally:
        conn.close()


def _row(live_server, serial):
    conn = live_server.connect()
    try:
        return conn.execute("SELECT state, moved_legacy_fen, moved_water_fen, activation_records, card_main_fen "
                            "FROM legacy_cards WHERE serial = ?", (serial,)).fetchone()
    finally:
        conn.close()


def test_only_activation_units_get_tickets(live_server, campus, unit):
    till = live_server.add_terminal()
    serial, _entry, _water = _pick(campus, migration.STUDENT, False)
    refused = till.post(cbor2.dumps({"serial": serial, "uid": b"\x01\x02\x03\x04"}),
                        path="/api/terminal/v1/activation-ticket")
    assert refused.status_code == 403 and cbor2.loads(refused.content)["error"] == "not_activation_unit"
    answer = _ticket(unit, serial)
    assert answer["recorded"] is False and answer["ticket"]["serial"] == serial
    assert _ticket(unit, 99999999) == {"ticket": None, "recorded": False}
    # the cache, page by page, ends at the version of the last ticket
    page = _ask(unit, "/api/terminal/v1/activation-tickets", {"after_version": 0, "limit": 10})
    assert len(page["tickets"]) == 10 and page["more"] is True
    rest = _ask(unit, "/api/terminal/v1/activation-tickets", {"after_version": page["version"], "limit": 500})
    serials = {t["serial"] for t in page["tickets"] + rest["tickets"]}
    assert set(campus) <= serials and rest["more"] is False


def test_a_students_card_money_moves_to_the_legacy_wallet_once(live_server, campus, unit, snapshot):
    serial, entry, _water = _pick(campus, migration.STUDENT, False)
    ticket = _ticket(unit, serial)["ticket"]
    before = _balances(live_server, ticket["account_id"])
    card_main_fen = entry["balance_fen"] - 50            # the card holds less than the export said
    first = _record(unit, ticket, card_main_fen, 1234)
    answer = unit.sync([first])
    assert answer["acked_seq"] == unit.next_seq - 1
    after = _balances(live_server, ticket["account_id"])
    assert after["legacy"] - before["legacy"] == card_main_fen
    assert after["water"] == before["water"]            # an unregistered 小钱包 waits for the hall
    assert _row(live_server, serial) == (migration.ACTIVATED, card_main_fen, 0, 1, card_main_fen)
    assert _ticket(unit, serial)["recorded"] is True

    # the same serial again: a second unit's record, then this unit's batch replayed
    other = live_server.add_terminal(category=wallet_rules.CATEGORY_ACTIVATION, legacy_master_key=OLD_KEY)
    other.sync([_record(other, ticket, card_main_fen, 1234)])
    unit.sync([first])
    assert _balances(live_server, ticket["account_id"]) == after
    assert _row(live_server, serial)[3] == 2            # two records seen, booked once

    conn = live_server.connect()
    try:
        assert migration.register_water(conn, serial) == 1234     # registered at the hall after activation
        assert migration.register_water(conn, serial) == 0
        assert registry.balances_of(conn, ticket["account_id"])["water"] == after["water"] + 1234
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()


def test_a_teachers_main_purse_stays_with_the_export_and_the_water_purse_moves(live_server, campus, unit):
    serial, entry, water_fen = _pick(campus, migration.TEACHER, True)
    ticket = _ticket(unit, serial)["ticket"]
    before = _balances(live_server, ticket["account_id"])
    assert before["main"] == entry["balance_fen"]      # booked at import, before any activation
    unit.sync([_record(unit, ticket, entry["balance_fen"] + 100, water_fen)])
    after = _balances(live_server, ticket["account_id"])
    assert after == dict(before, water=before["water"] + water_fen)
    conn = live_server.connect()
    try:
        report = migration.report(conn)
    finally:
        conn.close()
    assert report["teacher_cards_differing"] >= 1 and report["teacher_difference_fen"] >= 100


def test_records_naming_an_unknown_serial_or_another_card_are_kept_unbooked(live_server, campus, unit):
    serial, _entry, _water = _pick(campus, migration.TEMPORARY, False)
    ticket = _ticket(unit, serial)["ticket"]
    forged = dict(ticket, card_number=ticket["card_number"] + 1)
    unknown = dict(ticket, serial=99999998)
    before = _balances(live_server, ticket["account_id"])
    unit.sync([_record(unit, forged, 5000, 0), _record(unit, unknown, 5000, 0)])
    assert _balances(live_server, ticket["account_id"]) == before
    conn = live_server.connect()
    try:
        reasons = sorted(r[0] for r in conn.execute(
            "SELECT reason FROM record_anomalies WHERE terminal_id = ?", (unit.terminal_id,)))
        booked = conn.execute("SELECT count(*) FROM terminal_records WHERE terminal_id = ? AND booked = 0",
                              (unit.terminal_id,)).fetchone()[0]
    finally:
        conn.close()
    assert reasons == [migration.REASON_NOT_THE_TICKET, migration.REASON_UNKNOWN_SERIAL] and booked == 2
    assert _row(live_server, serial)[0] == migration.PENDING


def test_units_send_only_activations_and_tills_none(live_server, unit):
    conn = live_server.connect()
    try:
        merchant_id = conn.execute("SELECT merchant_id FROM terminals WHERE id = ?", (unit.terminal_id,)).fetchone()[0]
    finally:
        conn.close()
    purchase = records.encode_purchase(unit.terminal_id, 999, int(time.time() * 1000), 100001, 1, 1,
                                       wallet_rules.CATEGORY_CANTEEN, 1, 100, merchant_id)
    response = unit.post(unit.body([purchase]))
    assert response.status_code == 422 and cbor2.loads(response.content)["error"] == "wrong_category"


def test_the_hall_replaces_a_broken_card_free_and_books_it_once(live_server, campus, unit):
    serial, entry, water_fen = _pick(campus, migration.STUDENT, True)
    ticket = _ticket(unit, serial)["ticket"]
    before = _balances(live_server, ticket["account_id"])
    conn = live_server.connect()
    try:
        fees_before = registry.balances_of(conn, ticket["account_id"])
        identity, _name, booked = migration.replace_broken(conn, serial, b"\x0a\x0b\x0c\x0d")
        assert identity.card_number == ticket["card_number"] and identity.generation == 2
        assert sorted(fen for _id, fen in booked) == sorted([entry["balance_fen"], water_fen])
        with pytest.raises(registry.HallError):            # that UID is taken now
            migration.replace_broken(conn, serial, b"\x0a\x0b\x0c\x0d")
    finally:
        conn.close()
    after = _balances(live_server, ticket["account_id"])
    assert after["legacy"] - before["legacy"] == entry["balance_fen"]      # no ¥10 reissue fee
    assert after["water"] - before["water"] == water_fen and after["main"] == fees_before["main"]
    # the old card turns up at a unit after all: its record books nothing more
    unit.sync([_record(unit, ticket, entry["balance_fen"], water_fen)])
    assert _balances(live_server, ticket["account_id"]) == after
    assert _ticket(unit, serial)["ticket"] is None          # the pending card was replaced


def test_old_money_in_is_credited_plus_outstanding(live_server, campus, unit):
    conn = live_server.connect()
    try:
        report = migration.report(conn)
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()
    assert report["cards_activated"] >= 3 and report["moved_twice"] == 0
    assert report["conservation_ok"] and report["old_fen"] == report["credited_fen"] + report["outstanding_fen"]
    assert report["ledger_migrated_fen"] == report["credited_fen"]
    assert report["moved"]["student"]["legacy"] > 0 and report["moved"]["teacher"]["main"] > 0


def test_an_activation_merchant_takes_no_wallet_and_needs_the_old_keys(live_server):
    conn = live_server.connect()
    try:
        merchant_id = registry.add_merchant(conn, "激活点", "activation", wallet_rules.CATEGORY_ACTIVATION)
        terminal_id = registry.register_terminal(conn, merchant_id)
        with pytest.raises(registry.HallError) as refused:
            registry.provisioning_document(conn, live_server.master_key(), terminal_id, live_server.url)
        assert "migration-import" in refused.value.en
        document = registry.provisioning_document(conn, live_server.master_key(), terminal_id, live_server.url,
                                                  OLD_KEY)
    finally:
        conn.close()
    assert set(document["sam_keys"]) >= {"card_key_b", "card_mac", "legacy_master", "terminal"}
    assert protocol.WALLET_LEGACY in protocol.WALLETS


def _cli(server, *args):
    import os
    import subprocess
    import sys
    env = dict(os.environ, YKT_LANG="zh")
    env.pop("YKT_DATABASE_URL", None)
    if server.database and server.database.startswith("postgresql:"):
        env["YKT_DATABASE_URL"] = server.database
    return subprocess.run([sys.executable, "-m", "ykt", *args, "--data-dir", server.data_dir], capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_hall_and_finance_commands_and_the_finance_page(live_server, campus, unit):
    from test_finance_close import _signed_in
    from sync_server.web import auth
    serial, entry, _water = _pick(campus, migration.TEMPORARY, False)
    done = _cli(live_server, "hall", "migration-replace", "--serial", str(serial), "--uid", "0a0b0c0e", "--json")
    assert done.returncode == 0, done.stderr
    replaced = json.loads(done.stdout)
    assert replaced["fee_fen"] == 0 and replaced["booked_fen"] == entry["balance_fen"] and replaced["generation"] == 2
    again = _cli(live_server, "hall", "migration-replace", "--serial", "99999999", "--uid", "0a0b0c0f")
    assert again.returncode == 6 and "99999999" in again.stderr and "Traceback" not in again.stderr
    conn = live_server.connect()
    try:
        pending = conn.execute("SELECT serial FROM legacy_cards WHERE state = 'pending' ORDER BY serial LIMIT 1").fetchone()[0]
    finally:
        conn.close()
    refused = _cli(live_server, "hall", "migration-water", "--serial", str(pending))
    assert refused.returncode == 2 and "尚未激活" in refused.stderr

    done = _cli(live_server, "finance", "migration-report", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["conservation_ok"] and report["moved"]["temporary"]["legacy"] >= entry["balance_fen"]
    assert "旧系统余额" in done.stderr and "原卡余额" in done.stderr

    conn = live_server.connect()
    try:
        auth.add_staff_user(conn, "caiwu-mg", "财务二", ["finance"], "finance-password-2")
    finally:
        conn.close()
    client = _signed_in(live_server, "caiwu-mg", "finance-password-2")
    page = client.get("/finance/migration").text
    assert 'id="invariant" class="ok"' in page and "已入账" in page and "原卡余额" in page
    assert "%.2f" % (report["credited_fen"] / 100) in page
    assert client.get("/finance/").status_code == 200 and 'id="finance-migration"' in client.get("/finance/").text
