"""Ingest benchmark: purchase records per second stored through the HTTP sync endpoint, against two
baselines measured in the same run.

    http_records_per_s       the real server (`ykt server` subprocess on a free loopback port) storing
                             signed 500-record CBOR batches sent by one client thread per terminal
    raw_same_writes_per_s    the same SQL writes the server makes per batch (request counter, record
                             rows, transfer rows, balance, account and tap-counter updates, terminal
                             row) straight through sqlite3 (or psycopg, on PostgreSQL): same statements, schema,
                             settings, batch size and one transaction per batch (taking the same
                             writer lock), but no HTTP, CBOR, MAC, validation or reads
    raw_records_only_per_s   just the terminal_records rows, one transaction per batch

`ratio_vs_same_writes` is what HTTP, authentication, decoding, checking and booking cost on top of
the unavoidable writes; `ratio_vs_records_only` is the issue's literal aim (half the raw rate).
Each raw baseline starts from a fresh database provisioned exactly like the server's, and its rows
are computed before the clock starts. One JSON line on stdout; progress on stderr.

    .venv/bin/python benchmarks/ingest.py [--records 100000] [--terminals 4] [--workers 2]
                                          [--database postgresql://...|private]

`--database` runs every measurement on PostgreSQL (benchmarks/bench_store.py), SQLite by default.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from firmware.core import protocol, records
from sync_server import db as dbmod, ingest, ledger, registry, serving, terminal_api
from sync_server.business_day import day_of_ms
from sync_server.ledger_store import ADD_TO_BALANCES, INSERT_TRANSFERS_SQL, SqliteStore
from server_process import running_server
import bench_store

BATCH_RECORDS = 500
MIN_RECORDS = 100000
MAX_RECORDS = 5000000     # prepared batches live in memory (about 150 bytes a record)
MERCHANT_NAMES = ("一食堂", "Canteen 1")
_NEXT_COUNTER_SQL = "UPDATE counters SET value = value + ? WHERE name = 'balance_version'"


def log(message):
    print(message, file=sys.stderr, flush=True)


def provision(conn, people_count, seed):
    """Cardholders and one canteen merchant, identically in every database of the run."""
    people = registry.provision_population(conn, people_count, seed, initial_balance_fen=10 ** 7)
    merchant_id = registry.add_merchant(conn, MERCHANT_NAMES[0], MERCHANT_NAMES[1], 1)
    return people, merchant_id


def build_batches(terminals, people, count, rng, balance_version):
    """Signed request bodies for `count` records of each terminal (prepared before timing), one list per
    terminal. Batches are made round-robin over the terminals and a card's tap counter follows the card
    across them, as the counter on a real card does (a card tapped at window 1 and then at window 2
    counts on), so the counter anomalies the server notes are the few an interleaved upload makes."""
    now_ms = int(time.time() * 1000)
    taps = {}
    work = [[] for _ in terminals]
    for start in range(1, count + 1, BATCH_RECORDS):
        for terminal, bodies in zip(terminals, work):
            batch = []
            for seq in range(start, min(start + BATCH_RECORDS, count + 1)):
                identity = rng.choice(people)["identity"]
                taps[identity.card_number] = taps.get(identity.card_number, 0) + 1
                batch.append(records.encode_purchase(terminal.terminal_id, seq, now_ms + seq, identity.card_number,
                                                     identity.account_id, 1, terminal.category,
                                                     taps[identity.card_number], rng.randint(300, 1500),
                                                     terminal.merchant_id))
            # a terminal that had caught up before the rush: every answer carries a full balance page
            body = terminal.body(batch, clock_ms=now_ms, balance_version=balance_version)
            terminal.counter += 1
            headers = protocol.auth_headers(terminal.sam, "POST", protocol.SYNC_PATH, terminal.terminal_id,
                                            terminal.counter, body)
            headers["Content-Type"] = protocol.CONTENT_TYPE
            bodies.append((body, headers, batch))
    return work


def upload(url, bodies, failures):
    with httpx.Client(base_url=url, timeout=120) as client:
        for body, headers, _batch in bodies:
            response = client.post(protocol.SYNC_PATH, content=body, headers=headers)
            if response.status_code != 200:
                failures.append(response.content)
                return


def measure_http(args, work_dir):
    """Upload every batch through the real server; returns (records per second, batches in upload order)."""
    rng = random.Random(args.seed)
    per_terminal = args.records // args.terminals
    database = args.new_database("http") if args.database else None
    with running_server(os.path.join(work_dir, "server"), workers=args.workers, database=database) as server:
        conn = server.connect()
        people, merchant_id = provision(conn, args.people, args.seed)
        terminals = [server.add_terminal(merchant_id) for _ in range(args.terminals)]
        log("preparing %d records in %d-record batches for %d terminals"
            % (per_terminal * args.terminals, BATCH_RECORDS, args.terminals))
        balance_version = dbmod.counter_value(conn, "balance_version")
        work = build_batches(terminals, people, per_terminal, rng, balance_version)
        failures = []
        threads = [threading.Thread(target=upload, args=(server.url, bodies, failures)) for bodies in work]
        log("uploading over HTTP (%d server worker processes)" % args.workers)
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        if failures:
            raise SystemExit("upload refused: %r" % failures[0][:300])
        total = per_terminal * args.terminals
        stored = conn.execute("SELECT count(*) FROM terminal_records").fetchone()[0]
        assert stored == total, (stored, total)
        problems = ledger.check_balances(SqliteStore(conn))
        assert not problems, problems[:3]
        conn.close()
    log("HTTP: %d records in %.2f s" % (total, elapsed))
    # the raw baselines replay the batches round-robin over terminals, as they interleave on the wire
    batches = [(terminal.terminal_id, batch) for group in zip(*work)
               for terminal, (_body, _headers, batch) in zip(terminals, group)]
    return total / elapsed, batches, [t.terminal_id for t in terminals]


def fresh_database(args, location, terminal_ids):
    conn = dbmod.init_db(location)
    _people, merchant_id = provision(conn, args.people, args.seed)
    ids = [registry.register_terminal(conn, merchant_id) for _ in terminal_ids]
    assert ids == terminal_ids, "fresh database must number terminals like the server's"
    merchant_ledger_id = conn.execute("SELECT ledger_account_id FROM merchants WHERE id = ?",
                                      (merchant_id,)).fetchone()[0]
    return conn, merchant_ledger_id


def records_only_rate(args, batches, terminal_ids):
    """The record rows alone inserted straight into terminal_records, one transaction per batch."""
    conn, _merchant_ledger_id = fresh_database(args, args.new_database("raw-records"), terminal_ids)
    received_ms = dbmod.now_ms()
    prepared = [[record_row(raw, received_ms) for raw in batch] for _terminal_id, batch in batches]
    started = time.perf_counter()
    for rows in prepared:
        with dbmod.transaction(conn):
            conn.executemany(ingest.INSERT_RECORDS_SQL, rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return sum(len(rows) for rows in prepared) / elapsed


def record_row(raw, received_ms):
    v = records.decode_tuple(raw)
    return (v[3], v[4], raw, v[1], v[2], v[5], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], received_ms, 1)


def same_writes_rate(args, batches, terminal_ids):
    """Every write the server makes per batch, values computed beforehand, no reads, no HTTP."""
    conn, merchant_ledger_id = fresh_database(args, args.new_database("raw-same"), terminal_ids)
    store = SqliteStore(conn)
    wallet_ids = store.wallet_ids([row[0] for row in conn.execute("SELECT id FROM accounts")])
    balances = store.all_balances()
    version = dbmod.counter_value(conn, "balance_version")
    received_ms = dbmod.now_ms()
    today = day_of_ms(received_ms)
    counters = {}
    card_state = {}
    prepared = []
    for terminal_id, batch in batches:
        counters[terminal_id] = counters.get(terminal_id, 0) + 1
        rows = [record_row(raw, received_ms) for raw in batch]
        purchases = [ledger.Purchase(row[0], row[1], row[6], row[8], row[10], row[12], merchant_ledger_id)
                     for row in rows]
        transfers = ledger.plan_purchases(balances, wallet_ids, purchases)
        balance_rows = [(fen, ledger_id) for ledger_id, fen in ledger.balance_changes(transfers).items()]
        account_ids = sorted({p.account_id for p in purchases})
        spent = {}
        for purchase in purchases:
            if day_of_ms(purchase.time_ms) == today:
                spent[purchase.account_id] = spent.get(purchase.account_id, 0) + purchase.amount_fen
        account_rows = [(today, spent.get(a, 0), spent.get(a, 0), today, version + 1 + i, a)
                        for i, a in enumerate(account_ids)]
        version += len(account_ids)
        refs = {}
        for row in rows:
            ref = row[7] * 256 + row[9]
            card_state[ref] = max(card_state.get(ref, 0), row[11])
            refs[ref] = (ref, card_state[ref])
        seq_high = rows[-1][1]
        prepared.append(((terminal_id, counters[terminal_id], received_ms), rows, transfers, balance_rows,
                         len(account_ids), account_rows, list(refs.values()),
                         (seq_high, seq_high, received_ms, 0, '{"journal_depth": %d}' % len(rows), terminal_id)))
    total = sum(len(item[1]) for item in prepared)
    started = time.perf_counter()
    for counter_row, rows, transfers, balance_rows, touched, account_rows, card_rows, terminal_row in prepared:
        with dbmod.transaction(conn):
            conn.execute(terminal_api.UPSERT_REQUEST_COUNTER_SQL, counter_row)
            conn.executemany(INSERT_TRANSFERS_SQL, transfers)
            dbmod.write_rows(conn, ADD_TO_BALANCES, balance_rows)
            conn.execute(_NEXT_COUNTER_SQL, (touched,))
            dbmod.write_rows(conn, ingest.UPDATE_ACCOUNTS, account_rows)
            conn.executemany(ingest.INSERT_RECORDS_SQL, rows)
            dbmod.write_rows(conn, ingest.UPSERT_CARD_COUNTERS, card_rows)
            conn.execute(terminal_api.UPDATE_TERMINAL_SQL, terminal_row)
    elapsed = time.perf_counter() - started
    assert not ledger.check_balances(store), "the baseline's own ledger must balance too"
    conn.close()
    return total / elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=MIN_RECORDS,
                        help="records to upload (at least %d, default %d)" % (MIN_RECORDS, MIN_RECORDS))
    parser.add_argument("--terminals", type=int, default=4, help="concurrent terminals, one client thread each")
    parser.add_argument("--workers", type=int, default=serving.DEFAULT_WORKERS,
                        help="server worker processes (ykt server --workers; its default, two per core)")
    parser.add_argument("--people", type=int, default=3000, help="cardholders the taps are spread over")
    parser.add_argument("--seed", type=int, default=1)
    bench_store.add_database_option(parser)
    args = parser.parse_args(argv)
    if not MIN_RECORDS <= args.records <= MAX_RECORDS:
        parser.error("--records must be between %d and %d" % (MIN_RECORDS, MAX_RECORDS))
    if not 1 <= args.terminals <= 64 or not 1 <= args.workers <= 16:
        parser.error("--terminals 1..64, --workers 1..16")
    store = bench_store.store_name(args.database)
    with tempfile.TemporaryDirectory(prefix="ingest-") as work_dir, \
            bench_store.databases(args.database, work_dir) as args.new_database:
        http_rate, batches, terminal_ids = measure_http(args, work_dir)
        log("the same writes straight into %s" % store)
        same_rate = same_writes_rate(args, batches, terminal_ids)
        log("the record rows alone straight into %s" % store)
        records_rate = records_only_rate(args, batches, terminal_ids)
    total = sum(len(batch) for _terminal_id, batch in batches)
    print(json.dumps({
        "benchmark": "ingest", "store": store, "records": total, "batch_records": BATCH_RECORDS, "terminals": args.terminals,
        "workers": args.workers, "http_records_per_s": round(http_rate),
        "raw_same_writes_per_s": round(same_rate), "raw_records_only_per_s": round(records_rate),
        "ratio_vs_same_writes": round(http_rate / same_rate, 3),
        "ratio_vs_records_only": round(http_rate / records_rate, 3), "seed": args.seed}))


if __name__ == "__main__":
    main()
