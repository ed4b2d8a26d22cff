"""Anomalies a close lists: accounts driven negative, cards suspected cloned, records of revoked
terminals, impossible times, unbooked and late records.

A side effect besides the report: a card whose tap counter repeats or runs backwards is suspected
cloned and denied (card status frozen, a deny entry terminals fetch on their next sync).

Limits: the clone check sees the records of the day being closed plus the repeats the ingest noted;
two copies of a card used on different days with no repeat noted are not caught here.
"""
from firmware.core import protocol
from sync_server.business_day import day_text
from sync_server.finance import settlement
from sync_server.finance.close_window import MAX_LISTED
from sync_server.ledger_store import add_deny_entries

MAX_DOUBLE_USES_READ = 100000         # bound on the double-use rows one close reads
MAX_WATCHED_CARDS = 100000         # cards with counter notes followed through one close


def watched_cards(window):
    """Cards with repeat or backwards tap-counter notes since the floor: {card_number: kinds},
    and the (terminal, seq) of the repeats."""
    watched, repeats = {}, {}
    for card, generation, kind, terminal_id, seq in window.conn.execute(
            "SELECT card_number, generation, kind, terminal_id, seq FROM counter_anomalies WHERE id > ? "
            "AND id <= ? AND kind IN ('repeat', 'late') ORDER BY id LIMIT ?",
            (window.counter_floor, window.watermarks[1], MAX_WATCHED_CARDS)):
        watched.setdefault(card, set()).add(generation)
        if kind == "repeat":
            repeats[(terminal_id, seq)] = (card, generation)
    return watched, repeats


def find_clones(window, watched_taps, repeats, settled):
    """Cards whose tap counter repeats or runs backwards in time: {(card, generation): finding}."""
    found = {}
    for (terminal_id, seq), card_ref in repeats.items():
        if settlement.in_ranges(settled.get(terminal_id, ()), seq):
            found.setdefault(card_ref, {"kinds": set(), "taps": []})["kinds"].add("repeat")
    for card_ref, taps in watched_taps.items():
        taps.sort()
        counters = {}
        highest = None
        for time_ms, counter, terminal_id, seq in taps:
            if counter in counters:
                found.setdefault(card_ref, {"kinds": set(), "taps": []})["kinds"].add("repeat")
            counters[counter] = (terminal_id, seq)
            if highest is not None and counter < highest[1] and time_ms - highest[0] > window.tolerance_ms:
                found.setdefault(card_ref, {"kinds": set(), "taps": []})["kinds"].add("backwards")
            if highest is None or counter > highest[1]:
                highest = (time_ms, counter)
        if card_ref in found:
            found[card_ref]["taps"] = [[t, c, term, s] for t, c, term, s in taps[:MAX_LISTED]]
    return found


def holder_of(conn, account_id):
    """{name, staff_number} of an account's holder, how finance names people in the report (the
    internal account id means nothing to a person); empty for no account."""
    row = None if account_id is None else conn.execute(
        "SELECT p.name, p.staff_number FROM accounts a JOIN persons p ON p.id = a.person_id WHERE a.id = ?",
        (account_id,)).fetchone()
    return {"name": row[0], "staff_number": row[1]} if row else {}


def report_section(window, scan):
    """The anomalies section: negative accounts, cards denied as cloned (a side effect), records of
    revoked terminals, impossible times, unbooked records (cards not the named account's apart) and late
    records."""
    conn = window.conn
    double_uses = paycode_double_uses(conn, scan["paycodes"]["records"])
    negative = []
    for (account_id,) in conn.execute(
            "SELECT DISTINCT ref FROM deny_entries WHERE version > ? AND version <= ? AND kind = ? AND active = 1 "
            "AND reason = ? ORDER BY ref", (window.previous[2], window.watermarks[2], protocol.DENY_ACCOUNT,
                                            protocol.DENY_REASON_NEGATIVE)):
        wallets = dict(conn.execute(
            "SELECT la.wallet, b.balance_fen FROM ledger_accounts la JOIN balances b ON b.ledger_account_id = la.id "
            "WHERE la.account_id = ?", (account_id,)))
        flag = conn.execute("SELECT in_debt FROM accounts WHERE id = ?", (account_id,)).fetchone()
        negative.append(dict(holder_of(conn, account_id), account_id=account_id, wallets_fen=wallets,
                             blocked=bool(flag and flag[0])))
    clones = []
    for (card, generation), finding in sorted(scan["clones"].items()):
        clones.append(deny_clone(window, card, generation, finding))
    mismatches = card_mismatches(conn, scan["unbooked"])
    unbooked = [item for item in scan["unbooked"] if (item[0], item[1]) not in mismatches]
    reasons = {}
    for terminal_id, seq, _amount in unbooked[:MAX_LISTED]:
        row = conn.execute("SELECT reason FROM record_anomalies WHERE terminal_id = ? AND seq = ?",
                           (terminal_id, seq)).fetchone()
        reasons[(terminal_id, seq)] = row[0] if row else "unbooked"
    return {
        "negative_accounts": negative[:MAX_LISTED],
        "negative_account_count": len(negative),
        "cloned_cards": clones[:MAX_LISTED],
        "cloned_card_count": len(clones),
        "revoked_terminal_records": [{"terminal_id": t, "seq": s, "time_ms": tm, "revoked_ms": r}
                                     for t, s, tm, r in scan["revoked"][:MAX_LISTED]],
        "revoked_terminal_record_count": len(scan["revoked"]),
        "impossible_times": [{"terminal_id": t, "seq": s, "time_ms": tm, "received_ms": r}
                             for t, s, tm, r in scan["impossible"][:MAX_LISTED]],
        "impossible_time_count": len(scan["impossible"]),
        "unbooked_records": [{"terminal_id": t, "seq": s, "amount_fen": a, "reason": reasons.get((t, s))}
                             for t, s, a in unbooked[:MAX_LISTED]],
        "unbooked_record_count": len(unbooked),
        "card_mismatches": [mismatches[key] for key in sorted(mismatches)[:MAX_LISTED]],
        "card_mismatch_count": len(mismatches),
        "late_records": [{"terminal_id": t, "seq": s, "own_day": day_text(own), "merchant_id": m,
                          "amount_fen": a} for t, s, _d, own, m, a in scan["late"][:MAX_LISTED]],
        "paycode_double_uses": double_uses[:MAX_LISTED],
        "paycode_double_use_count": len(double_uses),
    }


def paycode_double_uses(conn, paycode_records):
    """The pay-code sales among `paycode_records` [(terminal, seq)] whose code was used more than once
    (offline, at two terminals; sync_server/paycode.py): both sales stand, the credential was revoked.
    Double uses are rare (each revokes its credential), so all of them are read and matched here."""
    wanted = set(paycode_records)
    found = []
    for terminal_id, seq, credential_id, time_step, counter, account_id, amount_fen in conn.execute(
            "SELECT terminal_id, seq, credential_id, time_step, counter, account_id, amount_fen FROM paycode_uses "
            "WHERE double_use = 1 ORDER BY credential_id, time_step, counter, terminal_id, seq LIMIT ?",
            (MAX_DOUBLE_USES_READ,)):
        if (terminal_id, seq) in wanted:
            found.append({"terminal_id": terminal_id, "seq": seq, "credential_id": credential_id,
                          "time_step": time_step, "counter": counter, "account_id": account_id,
                          "amount_fen": amount_fen})
    return found


def deny_clone(window, card, generation, finding):
    """Deny a card suspected cloned (once); returns its report row."""
    conn = window.conn
    row = conn.execute("SELECT account_id, status FROM cards WHERE card_number = ? AND generation = ?",
                       (card, generation)).fetchone()
    account_id, status = (row[0], row[1]) if row else (None, None)
    denied_now = status == "active"
    if denied_now:
        conn.execute("UPDATE cards SET status = 'frozen' WHERE card_number = ? AND generation = ?",
                     (card, generation))
        add_deny_entries(conn, [(protocol.DENY_CARD, protocol.card_deny_ref(card, generation), 1,
                                 protocol.DENY_REASON_FROZEN)], window.now_ms)
    return {"card_number": card, "generation": generation, "account_id": account_id,
            "kinds": sorted(finding["kinds"]), "taps": finding["taps"], "denied": status != "active" or denied_now,
            "card_status_before": status}


def card_mismatches(conn, unbooked):
    """{(terminal, seq): finding} for the unbooked records of this close whose card was not the named
    account's (sync_server/ingest.py): not debited, the merchant not credited, unsettled for good."""
    keys = {(terminal_id, seq) for terminal_id, seq, _amount in unbooked}
    seqs = {}
    for terminal_id, seq in keys:
        seqs.setdefault(terminal_id, []).append(seq)
    found = {}
    for terminal_id, terminal_seqs in sorted(seqs.items()):
        for seq, card, generation, named, owner, amount_fen in conn.execute(
                "SELECT seq, card_number, card_generation, named_account_id, owner_account_id, amount_fen "
                "FROM card_mismatches WHERE terminal_id = ? AND seq BETWEEN ? AND ?",
                (terminal_id, min(terminal_seqs), max(terminal_seqs))):
            if (terminal_id, seq) in keys:
                found[(terminal_id, seq)] = {"terminal_id": terminal_id, "seq": seq, "card_number": card,
                                             "generation": generation, "named_account_id": named,
                                             "owner_account_id": owner, "amount_fen": amount_fen,
                                             "reason": "card_mismatch", "named": holder_of(conn, named),
                                             "owner": holder_of(conn, owner)}
    return found
