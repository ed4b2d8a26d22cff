"""Ingest benchmark: purchase records per second stored through the HTTP sync endpoint.

Starts the real server (gunicorn subprocess on a free loopback port), provisions cardholders and
several terminals, and uploads N records in signed 500-record batches from one client thread per
terminal. In the same run it inserts the same rows straight into SQLite (same schema, same PRAGMAs,
same rows per transaction) for comparison. Prints one JSON line on stdout; progress on stderr.

    .venv/bin/python benchmarks/ingest.py [--records 200000] [--terminals 4] [--workers 2]
"""
import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

import cbor2
import httpx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from firmware.core import protocol, records  # noqa: E402
from sync_server import db as dbmod, hall  # noqa: E402
from server_process import running_server  # noqa: E402

BATCH_RECORDS = 500


def log(message):
    print(message, file=sys.stderr, flush=True)


def build_batches(terminal, people, count, rng, balance_version):
    """Signed request bodies for `count` records of one terminal (prepared before timing)."""
    bodies = []
    now_ms = int(time.time() * 1000)
    taps = {}
    for start in range(1, count + 1, BATCH_RECORDS):
        batch = []
        for seq in range(start, min(start + BATCH_RECORDS, count + 1)):
            person = rng.choice(people)
            identity = person["identity"]
            taps[identity.card_number] = taps.get(identity.card_number, 0) + 1
            batch.append(records.encode_purchase(terminal.terminal_id, seq, now_ms + seq, identity.card_number,
                                                 identity.account_id, 1, terminal.category,
                                                 taps[identity.card_number], rng.randint(300, 1500),
                                                 terminal.merchant_id))
        # a terminal that had caught up before the rush: deltas carry only what the rush changes
        body = terminal.body(batch, clock_ms=now_ms, balance_version=balance_version)
        terminal.counter += 1
        headers = protocol.auth_headers(terminal.sam, "POST", protocol.SYNC_PATH, terminal.terminal_id,
                                        terminal.counter, body)
        headers["Content-Type"] = protocol.CONTENT_TYPE
        bodies.append((body, headers, batch))
    return bodies


def upload(url, bodies, failures):
    with httpx.Client(base_url=url, timeout=120) as client:
        for body, headers, batch in bodies:
            response = client.post(protocol.SYNC_PATH, content=body, headers=headers)
            if response.status_code != 200:
                failures.append(response.content)
                return


def raw_sqlite_rate(batches):
    """The same rows inserted straight into terminal_records of a fresh database."""
    directory = tempfile.mkdtemp(prefix="ingest-raw-")
    conn = dbmod.init_db(dbmod.db_path(directory))
    received_ms = int(time.time() * 1000)
    prepared = []
    for batch in batches:
        rows = []
        for raw in batch:
            v = records.decode_tuple(raw)
            rows.append((v[3], v[4], raw, v[1], v[2], v[5], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
                         received_ms, 1))
        prepared.append(rows)
    total = sum(len(rows) for rows in prepared)
    started = time.perf_counter()
    for rows in prepared:
        with dbmod.transaction(conn):
            conn.executemany(
                "INSERT INTO terminal_records (terminal_id, seq, raw, kind, flags, time_ms, corrected_time_ms, "
                "card_number, account_id, card_generation, category, tap_counter, amount_fen, merchant_id, "
                "received_ms, booked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return total / elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200000)
    parser.add_argument("--terminals", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--people", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    per_terminal = args.records // args.terminals
    total = per_terminal * args.terminals
    with tempfile.TemporaryDirectory(prefix="ingest-") as data_dir:
        with running_server(data_dir, workers=args.workers) as server:
            conn = server.connect()
            people = hall.provision_population(conn, args.people, args.seed, initial_balance_fen=10 ** 7)
            merchant_id = hall.add_merchant(conn, "一食堂", "Canteen 1", 1)
            terminals = [server.add_terminal(merchant_id) for _ in range(args.terminals)]
            log("preparing %d records in %d-record batches for %d terminals" % (total, BATCH_RECORDS, args.terminals))
            balance_version = dbmod.counter_value(conn, "balance_version")
            work = [build_batches(t, people, per_terminal, rng, balance_version) for t in terminals]
            failures = []
            threads = [threading.Thread(target=upload, args=(server.url, bodies, failures)) for bodies in work]
            log("uploading over HTTP")
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            if failures:
                raise SystemExit("upload refused: %r" % failures[0][:300])
            stored = conn.execute("SELECT count(*) FROM terminal_records").fetchone()[0]
            assert stored == total, (stored, total)
            from sync_server import ledger
            from sync_server.ledger_store import SqliteStore
            problems = ledger.check_balances(SqliteStore(conn))
            assert not problems, problems[:3]
            conn.close()
    http_rate = total / elapsed
    log("HTTP: %d records in %.2f s; now the same rows straight into SQLite" % (total, elapsed))
    raw_rate = raw_sqlite_rate([batch for bodies in work for _body, _headers, batch in bodies])
    print(json.dumps({"benchmark": "ingest", "records": total, "http_records_per_s": round(http_rate),
                      "raw_sqlite_records_per_s": round(raw_rate), "ratio": round(http_rate / raw_rate, 3),
                      "batch_records": BATCH_RECORDS}))


if __name__ == "__main__":
    main()
