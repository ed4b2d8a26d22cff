"""The old card centre's export into the ledger (sync_server/legacy_migration.py), on SQLite and
PostgreSQL: a seeded campus of old cards and its export (simulators/legacy_campus.py); teachers'
balances are in their main wallets before any card is activated, students' wait for their cards,
lost and shared serials are kept apart for the hall; the same export again changes nothing; a file
with bad rows is refused whole, every bad line named; the ledger's migrated money is what the cards'
rows say was credited."""
import pytest

from simulators import legacy_campus
from sync_server import ledger, legacy_migration as migration, registry
from sync_server.ledger_store import SqliteStore
from test_paycode import _without_counters


@pytest.fixture(scope="module")
def campus(tmp_path_factory):
    out = tmp_path_factory.mktemp("campus") / "old"
    summary = legacy_campus.generate(str(out), 60, 11)
    read = lambda name: (out / name).read_text(encoding="utf-8")
    return summary, read(legacy_campus.PEOPLE_CSV), read(legacy_campus.WATER_CSV)


def test_teachers_balances_are_in_the_ledger_before_activation_and_once(fresh_server, campus, snapshot):
    _summary, people_csv, water_csv = campus
    people, water = migration.parse_export(people_csv, water_csv)
    conn = fresh_server.connect()
    try:
        counts = migration.import_export(conn, people_csv, water_csv)
        serials = {}
        for entry in people:
            serials.setdefault(entry["serial"], []).append(entry)
        shared = {serial for serial, entries in serials.items() if len(entries) > 1}
        teachers = [e for e in people if e["category"] == migration.TEACHER and not e["lost"]
                    and e["serial"] not in shared]
        assert counts["people_created"] == len(people) and counts["cards_new"] == len(serials)
        assert counts["duplicate"] == len(shared) > 0 and counts["lost"] > 0
        assert counts["teacher_fen_booked"] == sum(e["balance_fen"] for e in teachers) > 0
        for entry in teachers:
            account_id = conn.execute("SELECT a.id FROM accounts a JOIN persons p ON p.id = a.person_id "
                                      "WHERE p.staff_number = ?", (entry["staff_number"],)).fetchone()[0]
            assert registry.balances_of(conn, account_id)["main"] == entry["balance_fen"]
        students = [e for e in people if e["category"] == migration.STUDENT and e["serial"] not in shared]
        for entry in students[:5]:
            account_id = conn.execute("SELECT a.id FROM accounts a JOIN persons p ON p.id = a.person_id "
                                      "WHERE p.staff_number = ?", (entry["staff_number"],)).fetchone()[0]
            assert registry.balances_of(conn, account_id) == {"main": 0, "water": 0, "legacy": 0}
        assert counts["conservation_ok"] and counts["ledger_migrated_fen"] == counts["credited_fen"]
        assert counts["outstanding_fen"] == counts["old_fen"] - counts["credited_fen"]
        # what the export says is on the old cards: each serial's first row, and its registered 小钱包
        assert counts["old_fen"] == sum(entries[0]["balance_fen"] + water.get(serial, 0)
                                        for serial, entries in serials.items())
        assert ledger.check_balances(SqliteStore(conn)) == []

        before = snapshot(conn)
        again = migration.import_export(conn, people_csv, water_csv)      # the same export, imported twice
        assert again["cards_known"] == len(serials) and again["cards_new"] == 0 and again["teacher_fen_booked"] == 0
        assert snapshot(conn) == before
    finally:
        conn.close()


def test_an_export_with_bad_rows_is_refused_whole(fresh_server, campus, snapshot):
    _summary, people_csv, water_csv = campus
    lines = people_csv.splitlines()
    bad = "\n".join(lines[:3] + ["王错,T999,,教师,123,正常,10.00", "李错,T998,,学生,abc,正常,1.00",
                                 "张错,T997,,学生,77,正常,-5", "赵错,T996,,学生,78,丢了,1.00"] + lines[3:])
    conn = fresh_server.connect()
    try:
        before = snapshot(conn)
        with pytest.raises(migration.ExportRefused) as refused:
            migration.import_export(conn, bad, water_csv)
        assert [line for line, _what in refused.value.problems] == [4, 5, 6, 7]
        assert "4:" in refused.value.en and "身份" in refused.value.en
        with pytest.raises(migration.ExportRefused) as header:
            migration.import_export(conn, "name,number\n", water_csv)
        assert header.value.problems[0][0] == 1
        with pytest.raises(migration.ExportRefused):
            migration.import_export(conn, people_csv, "卡号,小钱包余额(元)\n12,1000.00\n")   # over the purse's limit
        assert snapshot(conn) == before
    finally:
        conn.close()


def test_an_activation_record_from_a_canteen_till_is_refused_and_changes_nothing(live_server, snapshot):
    """Activation records (firmware/core/activation.py) move money by the old serial, in the migration,
    and only activation units send them: a canteen till's batch carrying one is refused whole and
    nothing is stored or booked."""
    import cbor2
    from firmware.core import records
    till = live_server.add_terminal()
    record = records.encode_activation(till.terminal_id, 1, 1_800_000_000_000, 100001, 1, 1, migration.STUDENT,
                                       12345, 5000, 3, 200, 1)
    conn = live_server.connect()
    try:
        before = snapshot(conn)
        response = till.post(till.body([record]))
        assert response.status_code == 422 and cbor2.loads(response.content)["error"] == "wrong_category"
        after = snapshot(conn)
    finally:
        conn.close()
    assert _without_counters(after) == _without_counters(before)
