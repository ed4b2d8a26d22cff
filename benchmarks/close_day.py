"""Day-close benchmark: the time to close a day of a million records, beside a plain SQL aggregate of
the same rows measured in the same run.

The day is generated straight into SQLite with the server's real schema (migrations), the way the
ingest leaves it: terminal_records rows with their decoded columns, one purchase transfer per record
(wallet -> merchant), balances equal to the transfers, terminals with their acked seqs. Times fall
across yesterday's business hours (Beijing); a few records come from offline periods.

    close_s                 sync_server.finance.close.close_day() of yesterday: record pass, transfers,
                            anomalies, the window's balance check, and storing the report, in one
                            transaction (the time syncs wait for the write lock)
    ledger_check_s          close.verify_ledger() after the commit: every balance derived from every
                            transfer on a read snapshot (no write lock held)
    sql_aggregate_s         SELECT merchant, hour, count, sum over the same terminal_records rows
                            (the per-merchant-per-hour settlement, nothing else)
    ratio                   close_s / sql_aggregate_s

One JSON line on stdout; progress on stderr.

    .venv/bin/python benchmarks/close_day.py [--records 1000000] [--terminals 50] [--people 20000]
                                             [--database postgresql://...|private]

`--database` generates and closes the day on PostgreSQL (benchmarks/bench_store.py), SQLite by default.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from firmware.core import records as record_codec
from sync_server import db as dbmod, ingest, pg_store
from sync_server.finance import close, day_of_ms, day_start_ms
from sync_server.ledger_store import INSERT_TRANSFERS_SQL
import bench_store

MAX_RECORDS = 20000000
CHUNK = 50000
HOUR_MS = 3600 * 1000
OPENING_FEN = 10 ** 7


def log(message):
    print(message, file=sys.stderr, flush=True)


def generate(conn, location, records, terminals, people, seed):
    """Merchants, terminals, wallets and `records` purchases of yesterday, straight into the tables."""
    rng = random.Random(seed)
    now_ms = dbmod.now_ms()
    day = day_of_ms(now_ms) - 1
    start_ms = day_start_ms(day) + 7 * HOUR_MS          # 07:00 to 21:00 Beijing
    span_ms = 14 * HOUR_MS
    sqlite = not pg_store.is_postgresql(location)
    if sqlite:
        conn.execute("PRAGMA synchronous=OFF")         # set-up only; the close runs with the house PRAGMAs
    with dbmod.transaction(conn):
        merchant_ledger = {}
        for terminal_id in range(1, terminals + 1):
            ledger_id = conn.execute("INSERT INTO ledger_accounts (kind, name_zh, name_en) VALUES ('merchant', ?, ?) RETURNING id",
                                     ("窗口 %d" % terminal_id, "window %d" % terminal_id)).fetchone()[0]
            merchant_id = conn.execute("INSERT INTO merchants (name_zh, name_en, category, ledger_account_id) VALUES "
                                       "(?, ?, 1, ?) RETURNING id", ("窗口 %d" % terminal_id, "window %d" % terminal_id,
                                                       ledger_id)).fetchone()[0]
            merchant_ledger[merchant_id] = ledger_id
            conn.execute("INSERT INTO terminals (id, merchant_id, status, acked_seq, max_seq, last_sync_ms, "
                         "clock_offset_ms, created_ms) VALUES (?, ?, 'active', 0, 0, ?, 0, ?)",
                         (terminal_id, merchant_id, now_ms, start_ms - 30 * 86400000))
        wallets = {}
        for account_id in range(1, people + 1):
            conn.execute("INSERT INTO persons (id, name, staff_number, category, created_ms) VALUES (?, 'x', ?, 2, ?)",
                         (account_id, "B%d" % account_id, now_ms))
            conn.execute("INSERT INTO accounts (id, person_id, single_limit_fen, daily_limit_fen, created_ms) "
                         "VALUES (?, ?, 5000, 30000, ?)", (account_id, account_id, now_ms))
            wallets[account_id] = conn.execute("INSERT INTO ledger_accounts (kind, account_id, wallet) VALUES "
                                               "('wallet', ?, 'main') RETURNING id", (account_id,)).fetchone()[0]
        conn.executemany(INSERT_TRANSFERS_SQL, [("r/bench/%d" % a, dbmod.LEDGER_CASH_DESK, wallets[a], OPENING_FEN,
                                                 "recharge", None, start_ms - 86400000) for a in wallets])
    per_terminal = records // terminals
    balances = {ledger_id: OPENING_FEN for ledger_id in wallets.values()}
    balances[dbmod.LEDGER_CASH_DESK] = -OPENING_FEN * people
    written = 0
    for terminal_id in range(1, terminals + 1):
        merchant_id = terminal_id
        merchant_fen = 0
        times = sorted(start_ms + rng.randrange(span_ms) for _ in range(per_terminal))
        offline_from = rng.randrange(per_terminal)
        for chunk_start in range(0, per_terminal, CHUNK):
            rows, transfers = [], []
            for index in range(chunk_start, min(per_terminal, chunk_start + CHUNK)):
                seq = index + 1
                account_id = rng.randrange(1, people + 1)
                amount_fen = rng.choice((350, 600, 800, 1000, 1200, 1500))
                flags = record_codec.FLAG_OFFLINE if offline_from <= index < offline_from + 50 else 0
                time_ms = times[index]
                raw = record_codec.encode_purchase(terminal_id, seq, time_ms, 100000 + account_id, account_id, 1, 1,
                                                   seq, amount_fen, merchant_id, flags)
                rows.append((terminal_id, seq, raw, 1, flags, time_ms, time_ms, 100000 + account_id, account_id, 1, 1,
                             seq, amount_fen, merchant_id, time_ms + 1000, 1))
                transfers.append(("p/%d/%d/0" % (terminal_id, seq), wallets[account_id], merchant_ledger[merchant_id],
                                  amount_fen, "purchase", "%d/%d" % (terminal_id, seq), time_ms))
                balances[wallets[account_id]] -= amount_fen
                merchant_fen += amount_fen
            with dbmod.transaction(conn):
                conn.executemany(ingest.INSERT_RECORDS_SQL, rows)
                conn.executemany(INSERT_TRANSFERS_SQL, transfers)
            written += len(rows)
        balances[merchant_ledger[merchant_id]] = merchant_fen
        with dbmod.transaction(conn):
            conn.execute("UPDATE terminals SET acked_seq = ?, max_seq = ? WHERE id = ?",
                         (per_terminal, per_terminal, terminal_id))
        log("generated %d records" % written)
    with dbmod.transaction(conn):
        conn.executemany("INSERT INTO balances (ledger_account_id, balance_fen) VALUES (?, ?) ON CONFLICT "
                         "(ledger_account_id) DO UPDATE SET balance_fen = excluded.balance_fen", balances.items())
    if sqlite:
        conn.execute("PRAGMA synchronous=FULL")
    else:
        conn.execute("ANALYZE")     # fresh statistics after the bulk load, as autovacuum would give in time
    return day, written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1000000)
    parser.add_argument("--terminals", type=int, default=50)
    parser.add_argument("--people", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=5)
    bench_store.add_database_option(parser)
    args = parser.parse_args(argv)
    assert 0 < args.records <= MAX_RECORDS and 0 < args.terminals <= args.records and args.people > 0
    with tempfile.TemporaryDirectory(prefix="ykt-close-bench-") as directory, \
            bench_store.databases(args.database, directory) as new_database:
        path = new_database("close")
        conn = dbmod.init_db(path)
        day, written = generate(conn, path, args.records, args.terminals, args.people, args.seed)
        conn.close()
        conn = dbmod.connect(path)
        conn.execute("SELECT count(*) FROM terminal_records").fetchone()   # both runs start from a warm cache
        started = time.perf_counter()
        rows = conn.execute("SELECT merchant_id, (corrected_time_ms + 28800000) % 86400000 / 3600000, count(*), "
                            "sum(amount_fen) FROM terminal_records GROUP BY 1, 2").fetchall()
        sql_s = time.perf_counter() - started
        started = time.perf_counter()
        report, newly = close.close_day(conn, day, check_ledger=False)
        close_s = time.perf_counter() - started
        started = time.perf_counter()
        check = close.verify_ledger(conn, day)
        check_s = time.perf_counter() - started
        conn.close()
    assert newly
    assert report["totals"]["records"] == written, "the close missed records"
    assert report["totals"]["gross_fen"] == sum(row[3] for row in rows), "close and SQL disagree"
    print(json.dumps({"benchmark": "close_day", "store": bench_store.store_name(args.database), "records": written, "terminals": args.terminals, "close_s": round(close_s, 3),
                      "sql_aggregate_s": round(sql_s, 3), "ratio": round(close_s / sql_s, 1),
                      "records_per_s": int(written / close_s), "balanced": report["invariants"]["balanced"],
                      "ledger_check_s": round(check_s, 3), "ledger_check_ok": check["ok"]}))


if __name__ == "__main__":
    main()
