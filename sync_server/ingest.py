"""Storing one sync batch: its new records, their ledger transfers, balances, account flags and
tap-counter notes (DESIGN.md section 3), all inside the caller's one write transaction.

Two halves, because the write lock is the one thing concurrent workers queue for:

- `prepare()` runs BEFORE the lock and does everything that depends only on the request and on rows
  that never change once written: the record rows, the wallet ids of the accounts (created with the
  account, never altered), the purchases, and the transfers of one-wallet categories (whose split
  cannot depend on balances). Workers do this in parallel.
- `store()` runs INSIDE the write transaction (`BEGIN IMMEDIATE` on SQLite; on PostgreSQL a shared one
  that lets the syncs of different terminals insert their own records and transfers side by side and
  then books one at a time, see pg_store.transaction) and does what depends on the current state:
  which seqs are new, balances and the multi-wallet splits, spending, debt flags, tap counters,
  acked_seq. Per batch it is a fixed handful of statements (executemany for rows; on PostgreSQL one
  statement over arrays each, db.ManyRows) and, per record, a little dict arithmetic.

Only the wallets the batch's categories may debit are loaded (a canteen batch: the main wallet). That
is enough for the debt flag: a purchase only lowers balances, so it can set an account's flag (one of
the wallets it debits went negative) but never lift one (that takes money coming in, see
ledger_store.update_debt_flags), and a wallet it does not debit keeps the balance, and the flag, it had.

A seq already stored must come again with the very bytes stored, else the batch is refused with
JournalMismatch: a terminal reflashed under the same id starts again at seq 1, and its new records
would otherwise be acked as already held, and lost. The comparison costs a query only when a batch
holds stored seqs (a resend after a lost answer, or over an out-of-order upload).

A record whose account is unknown at prepare time is stored unbooked with a record anomaly: a card
can only be tapped after its account committed, so an account missing then is missing for good.
So is a record whose card is not the named account's (no card of that number, or one of another
person: any generation of the person's cards counts as theirs), which only a forged or broken
terminal writes: stored once and acknowledged (refusing it would block the journal behind it for
good), never debited nor credited to the merchant, noted in card_mismatches with the card's real
owner, and counted on the terminal (terminals.card_mismatch_count > 0 flags it). The day close lists
it as unsettled with its reason.

Water sessions (records.KIND_WATER, KIND_WATER_GRANT) are stored the same way, with their volume in
water_sessions. A card's session is booked like a purchase (water -> legacy -> main); one that drew
nothing moves no money. A grant's session names its grant instead of a card: it settles the grant
(sync_server/water_holds.py) under the booking turn, unless the phone's copy of the receipt settled
it first, and it books nothing of its own. A grant record naming a grant that is not this
dispenser's, or not that account's, is stored unbooked with the reason unknown_grant.

Pay-code sales (records.KIND_PAYCODE) name the phone's credential where a card would be: booked like
a card's purchase when the credential is the named account's (else stored unbooked, reason
unknown_credential), and each kept in paycode_uses, where a code used twice is found
(sync_server/paycode.py: both sales stand, the credential is revoked).

Activation records (records.KIND_ACTIVATION, an old card's purses locked and its new identity
written; only activation units send them) are stored once and acknowledged like any record, and
their money moves by the old card's serial, once, under the booking turn
(legacy_migration.book_activations); one it cannot book is stored unbooked with its reason. They name the new card and the old serial where a tap names its card and
counter, so they stay out of the tap-counter notes and the card-ownership check.

The statements are module constants so that benchmarks/ingest.py can time the very same writes
straight through sqlite3.
"""
from firmware.core import protocol, records as record_codec, wallets as wallet_rules
from sync_server import db as dbmod, ledger, legacy_migration, paycode, water_holds
from sync_server.business_day import day_of_ms
from sync_server.ledger_store import SqliteStore, add_deny_entries, REASON_NEGATIVE

MAX_RESEND_RANGES = 4
MAX_GAP_SCAN_ROWS = 20000            # bound on the scan for holes above acked_seq

# record tuple indexes (records.FIELDS)
_KIND, _FLAGS, _TERMINAL, _SEQ, _TIME, _CARD, _ACCOUNT, _GENERATION, _CATEGORY, _COUNTER, _AMOUNT, \
    _MERCHANT = range(1, 13)

INSERT_RECORDS_SQL = (
    "INSERT INTO terminal_records (terminal_id, seq, raw, kind, flags, time_ms, corrected_time_ms, card_number, "
    "account_id, card_generation, category, tap_counter, amount_fen, merchant_id, received_ms, booked) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_BOOKED_COLUMN = 15
# spent_today_fen counts purchases dated on the server's day; a new day starts from this batch's sum
# (today, spent, spent, today, balance_version, account_id) rows, one per account
UPDATE_ACCOUNTS = dbmod.ManyRows(
    "UPDATE accounts SET spent_today_fen = CASE WHEN spent_day = ? THEN spent_today_fen + ? "
    "ELSE ? END, spent_day = ?, balance_version = ? WHERE id = ?",
    "UPDATE accounts SET spent_today_fen = CASE WHEN spent_day = u.today THEN spent_today_fen + u.spent "
    "ELSE u.fresh END, spent_day = u.day, balance_version = u.version "
    "FROM unnest(?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[]) "
    "AS u(today, spent, fresh, day, version, id) WHERE accounts.id = u.id")
# (card_ref, max_tap_counter) rows, one per card. taps_seen is no longer counted (nothing read it);
# the NOT NULL column of migration 1 gets 0 on insert
UPSERT_CARD_COUNTERS = dbmod.ManyRows(
    "INSERT INTO card_counters (card_ref, max_tap_counter, taps_seen) VALUES (?, ?, 0) "
    "ON CONFLICT (card_ref) DO UPDATE SET max_tap_counter = excluded.max_tap_counter",
    "INSERT INTO card_counters (card_ref, max_tap_counter, taps_seen) "
    "SELECT ref, top, 0 FROM unnest(?::bigint[], ?::bigint[]) AS u(ref, top) "
    "ON CONFLICT (card_ref) DO UPDATE SET max_tap_counter = excluded.max_tap_counter")
INSERT_COUNTER_ANOMALIES_SQL = ("INSERT INTO counter_anomalies (card_number, generation, kind, expected, seen, "
                                "terminal_id, seq, noticed_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_RECORD_ANOMALIES_SQL = "INSERT INTO record_anomalies (terminal_id, seq, reason, noticed_ms) VALUES (?, ?, ?, ?)"
INSERT_CARD_MISMATCHES_SQL = (
    "INSERT INTO card_mismatches (terminal_id, seq, card_number, card_generation, named_account_id, "
    "owner_account_id, amount_fen, noticed_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_WATER_SESSIONS_SQL = (
    "INSERT INTO water_sessions (terminal_id, seq, kind, account_id, grant_id, ml, amount_fen, duration_s, end_reason, "
    "end_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
REASON_UNKNOWN_ACCOUNT = "unknown_account"
REASON_CARD_MISMATCH = "card_mismatch"
REASON_UNKNOWN_GRANT = "unknown_grant"
REASON_UNKNOWN_CREDENTIAL = "unknown_credential"
_WATER_KINDS = record_codec.WATER_KINDS
_GRANT_KIND = record_codec.KIND_WATER_GRANT
_PAYCODE_KIND = record_codec.KIND_PAYCODE
_ACTIVATION_KIND = record_codec.KIND_ACTIVATION
_NO_CARD_KINDS = (_GRANT_KIND, _PAYCODE_KIND, _ACTIVATION_KIND)


class JournalMismatch(Exception):
    """A record's seq is stored with other bytes: the terminal's journal is not the one the server holds."""

    def __init__(self, seq):
        Exception.__init__(self, "seq %d differs from the stored record" % seq)
        self.seq = seq


class Batch:
    """One request's records, made ready for store() (see the module text)."""
    __slots__ = ("terminal_id", "received_ms", "rows", "purchases", "fixed", "wallet_ids", "values", "mismatches",
                 "stored_mismatches", "water", "grants", "moneyless", "bad_grants", "paycode_uses",
                 "bad_credentials")

    def __init__(self, terminal_id, received_ms):
        self.terminal_id = terminal_id
        self.received_ms = received_ms
        self.rows = {}          # seq -> terminal_records row (booked = 1)
        self.values = {}        # seq -> decoded record tuple
        self.purchases = {}     # seq -> ledger.Purchase (records of known accounts only)
        self.fixed = {}         # seq -> ledger.fixed_transfers() result
        self.wallet_ids = {}    # account_id -> {wallet: ledger_id}
        self.mismatches = {}    # seq -> (card, generation, named account, owner account or None, amount_fen)
        self.stored_mismatches = []   # those of them store() stored (new seqs), for the sync to report
        self.water = {}         # seq -> water_sessions row (water records)
        self.grants = {}        # seq -> (grant_id, fen, ml, end_reason) of grant sessions naming a good grant
        self.moneyless = set()  # seqs booked without a purchase: card sessions that drew nothing, grant sessions
        self.bad_grants = set()  # grant sessions naming a grant that is not theirs
        self.paycode_uses = {}  # seq -> paycode_uses row (pay-code sales of a good credential)
        self.bad_credentials = set()  # pay-code sales naming a credential that is not that account's


def prepare(conn, terminal_id, merchant_ledger_id, by_seq, offset_ms, received_ms):
    """Everything about `by_seq` {seq: (raw, values)} that needs no write lock (see the module text)."""
    batch = Batch(terminal_id, received_ms)
    wallets = set()
    for category in {v[_CATEGORY] for _raw, v in by_seq.values() if v[_KIND] != _ACTIVATION_KIND}:
        wallets.update(wallet_rules.WALLET_ORDER[category])
    account_ids = sorted({v[_ACCOUNT] for _raw, v in by_seq.values()})
    batch.wallet_ids = wallet_ids = SqliteStore(conn).wallet_ids(account_ids, wallets) \
        if account_ids and wallets else {}          # an activation unit's batch debits no wallet
    owners = _card_owners(conn, sorted({v[_CARD] for _raw, v in by_seq.values() if v[_KIND] not in _NO_CARD_KINDS}),
                          account_ids)
    credential_accounts = _credential_accounts(
        conn, sorted({v[_CARD] for _raw, v in by_seq.values() if v[_KIND] == _PAYCODE_KIND}))
    grants = _grants(conn, sorted({v[_COUNTER] for _raw, v in by_seq.values() if v[_KIND] == _GRANT_KIND}))
    rows, values_by_seq, purchases, fixed = batch.rows, batch.values, batch.purchases, batch.fixed
    purchase, fixed_transfers = ledger.Purchase, ledger.fixed_transfers
    for seq, (raw, v) in by_seq.items():
        time_ms = v[_TIME] + offset_ms
        rows[seq] = (terminal_id, seq, raw, v[_KIND], v[_FLAGS], v[_TIME], time_ms, v[_CARD], v[_ACCOUNT],
                     v[_GENERATION], v[_CATEGORY], v[_COUNTER], v[_AMOUNT], v[_MERCHANT], received_ms, 1)
        values_by_seq[seq] = v
        wallets = wallet_ids.get(v[_ACCOUNT])
        if v[_KIND] == _ACTIVATION_KIND:
            batch.moneyless.add(seq)            # booked by serial in the migration (module text)
            continue
        if v[_KIND] in _WATER_KINDS:
            ml, duration_s, end_reason = record_codec.water_fields(raw)
            grant_id = v[_COUNTER] if v[_KIND] == _GRANT_KIND else None
            batch.water[seq] = (terminal_id, seq, v[_KIND], v[_ACCOUNT], grant_id, ml, v[_AMOUNT], duration_s,
                                end_reason, time_ms)
            if grant_id is not None:
                if grants.get(grant_id) == (terminal_id, v[_ACCOUNT]):
                    batch.grants[seq] = (grant_id, v[_AMOUNT], ml, end_reason)
                    batch.moneyless.add(seq)
                else:
                    batch.bad_grants.add(seq)
                continue
        if v[_KIND] == _PAYCODE_KIND:
            if credential_accounts.get(v[_CARD]) != v[_ACCOUNT]:
                batch.bad_credentials.add(seq)
                continue
            batch.paycode_uses[seq] = (terminal_id, seq, v[_CARD], record_codec.paycode_time_step(raw), v[_COUNTER],
                                       v[_ACCOUNT], v[_AMOUNT], 1 if v[_FLAGS] & record_codec.FLAG_OFFLINE else 0,
                                       time_ms)
        if v[_KIND] != _PAYCODE_KIND and wallets is not None and not owners.owns(v[_ACCOUNT], v[_CARD]):
            batch.mismatches[seq] = (v[_CARD], v[_GENERATION], v[_ACCOUNT], owners.owner(v[_CARD]), v[_AMOUNT])
        elif wallets is not None and v[_AMOUNT] == 0:
            batch.moneyless.add(seq)            # a water session that drew nothing
        elif wallets is not None:
            purchases[seq] = p = purchase(terminal_id, seq, time_ms, v[_ACCOUNT], v[_CATEGORY], v[_AMOUNT],
                                          merchant_ledger_id)
            fixed[seq] = fixed_transfers(wallets, p)
    return batch


def _credential_accounts(conn, credential_ids):
    """{credential_id: account_id}: a credential's account never changes."""
    found = {}
    for condition, values in dbmod.in_lists(conn, credential_ids):
        found.update(conn.execute("SELECT id, account_id FROM paycode_credentials WHERE id %s" % condition,
                                  values).fetchall())
    return found


def _grants(conn, grant_ids):
    """{grant_id: (dispenser_id, account_id)}: what a grant names never changes once issued."""
    found = {}
    for condition, values in dbmod.in_lists(conn, grant_ids):
        for grant_id, dispenser_id, account_id in conn.execute(
                "SELECT id, dispenser_id, account_id FROM water_grants WHERE id %s" % condition, values).fetchall():
            found[grant_id] = (dispenser_id, account_id)
    return found


class _CardOwners:
    """Who holds each card number (any generation), and the person behind each named account."""

    def __init__(self, card_accounts, account_persons):
        self.card_accounts = card_accounts          # card_number -> {account_id: person_id}
        self.account_persons = account_persons      # named account_id -> person_id

    def owns(self, account_id, card_number):
        holders = self.card_accounts.get(card_number, {})
        return account_id in holders or self.account_persons.get(account_id) in holders.values()

    def owner(self, card_number):
        holders = self.card_accounts.get(card_number)
        return min(holders) if holders else None


def _card_owners(conn, card_numbers, account_ids):
    card_accounts, account_persons = {}, {}
    for condition, values in dbmod.in_lists(conn, card_numbers):
        for card_number, account_id, person_id in conn.execute(
                "SELECT c.card_number, c.account_id, a.person_id FROM cards c JOIN accounts a ON a.id = c.account_id "
                "WHERE c.card_number %s" % condition, values).fetchall():
            card_accounts.setdefault(card_number, {})[account_id] = person_id
    for condition, values in dbmod.in_lists(conn, account_ids):
        account_persons.update(conn.execute("SELECT id, person_id FROM accounts WHERE id %s" % condition,
                                            values).fetchall())
    return _CardOwners(card_accounts, account_persons)


def store(conn, batch, acked_seq, max_seq):
    """Store the batch's new records and book them; returns (acked_seq, max_seq, holes) after.

    Call inside the write transaction with the terminal's acked_seq and max_seq as read there (on
    PostgreSQL a shared one, with the terminal's row locked: see pg_store.transaction). What is the
    terminal's own (its records, the transfers of one-wallet purchases, keyed by terminal and seq)
    is written first; db.booking_turn() then waits for the other terminals' syncs before the rows
    they share (balances, accounts, counters, tap counters, deny entries).
    """
    assert conn.in_transaction
    new = sorted(_new_seqs(conn, batch.terminal_id, acked_seq, max_seq, batch.rows))
    if new:
        purchases = [batch.purchases[seq] for seq in new if seq in batch.purchases]
        unbooked = [seq for seq in new if seq not in batch.purchases and seq not in batch.moneyless]
        rows = [batch.rows[seq] for seq in new]
        if unbooked:
            unbooked_seqs = set(unbooked)
            rows = [row[:_BOOKED_COLUMN] + (0,) if row[1] in unbooked_seqs else row for row in rows]
        conn.executemany(INSERT_RECORDS_SQL, rows)
        water = [batch.water[seq] for seq in new if seq in batch.water]
        if water:
            conn.executemany(INSERT_WATER_SESSIONS_SQL, water)
        fixed = [batch.fixed[p.seq] for p in purchases]
        transfers = None
        if purchases and all(one is not None for one in fixed):
            # one-wallet categories: nothing depends on the balances (module text)
            transfers = [transfer for one in fixed for transfer in one]
            SqliteStore(conn).insert_transfers(transfers)
        dbmod.booking_turn(conn)
        _book(conn, batch, purchases, unbooked, transfers)
        for seq in new:
            if seq in batch.grants:
                grant_id, fen, ml, end_reason = batch.grants[seq]
                water_holds.settle(conn, grant_id, fen, ml, end_reason, water_holds.VIA_DISPENSER, seq,
                                   batch.received_ms)
        activations = [(seq, batch.values[seq], batch.rows[seq][2]) for seq in new
                       if batch.values[seq][_KIND] == _ACTIVATION_KIND]
        if activations:
            _refuse_activations(conn, batch, legacy_migration.book_activations(
                conn, batch.terminal_id, activations, batch.received_ms))
        uses = [batch.paycode_uses[seq] for seq in new if seq in batch.paycode_uses]
        if uses:
            paycode.note_uses(conn, uses, batch.received_ms)
        _note_tap_counters(conn, [batch.values[seq] for seq in new if batch.values[seq][_KIND] not in _NO_CARD_KINDS],
                           batch.received_ms)
        max_seq = max(max_seq, new[-1])
    acked_seq, holes = _advance_acked(conn, batch.terminal_id, acked_seq, max_seq)
    return acked_seq, max_seq, holes


def _refuse_activations(conn, batch, refused):
    """Activation records the migration could not book (an unknown serial, not the serial's ticket):
    stored unbooked with their reason, as any record anomaly."""
    if refused:
        conn.executemany("UPDATE terminal_records SET booked = 0 WHERE terminal_id = ? AND seq = ?",
                         [(batch.terminal_id, seq) for seq, _reason in refused])
        conn.executemany(INSERT_RECORD_ANOMALIES_SQL, [(batch.terminal_id, seq, reason, batch.received_ms)
                                                       for seq, reason in refused])


def _new_seqs(conn, terminal_id, acked_seq, max_seq, rows):
    """Which seqs of `rows` {seq: row} are not stored yet; raises JournalMismatch when a stored one
    comes with other bytes (module text). Anything <= acked_seq is stored; above it, ask only when an
    earlier out-of-order upload left rows there (max_seq > acked_seq)."""
    held = [seq for seq in rows if seq <= acked_seq]
    for condition, values in dbmod.in_lists(conn, held):
        _check_same(rows, conn.execute("SELECT seq, raw FROM terminal_records WHERE terminal_id = ? AND seq %s"
                                       % condition, [terminal_id] + values).fetchall())
    candidates = [seq for seq in rows if seq > acked_seq]
    if not candidates or max_seq <= acked_seq:
        return candidates
    low, high = min(candidates), max(candidates)
    stored = _check_same(rows, conn.execute(
        "SELECT seq, raw FROM terminal_records WHERE terminal_id = ? AND seq BETWEEN ? AND ?",
        (terminal_id, low, high)))
    return [seq for seq in candidates if seq not in stored]


def _check_same(rows, stored_rows):
    """The seqs of `stored_rows` [(seq, raw)]; raises JournalMismatch when one is in `rows` with other bytes."""
    seqs = set()
    for seq, raw in stored_rows:
        row = rows.get(seq)
        if row is not None and row[2] != raw:
            raise JournalMismatch(seq)
        seqs.add(seq)
    return seqs


def _advance_acked(conn, terminal_id, acked_seq, max_seq):
    """Highest contiguous seq and the holes above it (at most MAX_RESEND_RANGES ranges)."""
    return scan_holes(conn, terminal_id, acked_seq, max_seq, MAX_GAP_SCAN_ROWS, MAX_RESEND_RANGES)


def scan_holes(conn, terminal_id, acked_seq, max_seq, max_rows, max_ranges):
    """(highest contiguous seq, [(low, high)] missing seq ranges above it) from the terminal's stored
    records above `acked_seq`: at most `max_rows` rows read and `max_ranges` ranges kept (None: all)."""
    if max_seq <= acked_seq:
        return acked_seq, []
    rows = conn.execute("SELECT seq FROM terminal_records WHERE terminal_id = ? AND seq > ? ORDER BY seq "
                        "LIMIT ?", (terminal_id, acked_seq, max_rows))
    expected = acked_seq + 1
    contiguous = True
    holes = []
    for (seq,) in rows:
        if seq != expected:
            contiguous = False
            if max_ranges is None or len(holes) < max_ranges:
                holes.append((expected, seq - 1))
        if contiguous:
            acked_seq = seq
        expected = seq + 1
    return acked_seq, holes


def _book(conn, batch, purchases, unbooked, transfers):
    """Post the new records' purchases (`transfers`: theirs, inserted already, or None when a split
    depends on the balances); note the unbooked ones (unknown account, card not the account's);
    update spending, debt flags and balance versions of their accounts. Under the booking turn."""
    now_ms = batch.received_ms
    if unbooked:
        conn.executemany(INSERT_RECORD_ANOMALIES_SQL, [
            (batch.terminal_id, seq, REASON_CARD_MISMATCH if seq in batch.mismatches else
             REASON_UNKNOWN_GRANT if seq in batch.bad_grants else
             REASON_UNKNOWN_CREDENTIAL if seq in batch.bad_credentials else REASON_UNKNOWN_ACCOUNT, now_ms)
            for seq in unbooked])
        _note_card_mismatches(conn, batch, [seq for seq in unbooked if seq in batch.mismatches])
    if not purchases:
        return
    store = SqliteStore(conn)
    if transfers is not None:
        store.add_to_balances(ledger.balance_changes(transfers))
    else:
        fixed = [batch.fixed[p.seq] for p in purchases]
        wallet_ids = {p.account_id: batch.wallet_ids[p.account_id] for p in purchases}
        involved = {purchases[0].merchant_ledger_id}
        for ids in wallet_ids.values():
            involved.update(ids.values())
        balances = store.balances(sorted(involved))
        transfers = ledger.plan_purchases(balances, wallet_ids, purchases, fixed)
        store.insert_transfers(transfers)
        store.set_balances({ledger_id: balances[ledger_id] for ledger_id in ledger.touched_ids(transfers)})

    today = day_of_ms(now_ms)
    spent_today = {}
    for purchase in purchases:
        spent = spent_today.get(purchase.account_id, 0)
        spent_today[purchase.account_id] = spent + purchase.amount_fen if day_of_ms(purchase.time_ms) == today \
            else spent
    account_ids = sorted(spent_today)
    first_version = dbmod.next_counter(conn, "balance_version", len(account_ids))
    changed = dbmod.write_rows(conn, UPDATE_ACCOUNTS, [(today, spent_today[a], spent_today[a], today,
                                                        first_version + i, a) for i, a in enumerate(account_ids)])
    assert changed == len(account_ids), "ledger accounts without their account row"
    _flag_debt(conn, ledger.touched_ids(transfers), now_ms)


def _note_card_mismatches(conn, batch, seqs):
    """Keep what each mismatching record named and whose card it was; flag the terminal."""
    if not seqs:
        return
    batch.stored_mismatches = [(seq,) + batch.mismatches[seq] for seq in seqs]
    conn.executemany(INSERT_CARD_MISMATCHES_SQL, [(batch.terminal_id,) + mismatch + (batch.received_ms,)
                                                  for mismatch in batch.stored_mismatches])
    conn.execute("UPDATE terminals SET card_mismatch_count = card_mismatch_count + ? WHERE id = ?",
                 (len(seqs), batch.terminal_id))


def _flag_debt(conn, ledger_ids, now_ms):
    """Block the accounts whose wallets among `ledger_ids` went negative and are not blocked yet.

    Only setting: purchases lower balances, lifting a block takes money coming in (module text).
    """
    newly = set()
    for condition, values in dbmod.in_lists(conn, sorted(ledger_ids)):
        newly.update(row[0] for row in conn.execute(
            "SELECT la.account_id FROM balances b JOIN ledger_accounts la ON la.id = b.ledger_account_id "
            "JOIN accounts a ON a.id = la.account_id WHERE b.ledger_account_id %s AND b.balance_fen < 0 "
            "AND a.in_debt = 0" % condition, values).fetchall())
    if newly:
        newly = sorted(newly)
        conn.executemany("UPDATE accounts SET in_debt = 1 WHERE id = ?", [(account_id,) for account_id in newly])
        add_deny_entries(conn, [(protocol.DENY_ACCOUNT, account_id, 1, REASON_NEGATIVE) for account_id in newly],
                         now_ms)


def _note_tap_counters(conn, new_rows, now_ms):
    """Remember the highest tap counter per card; note repeats, gaps and late arrivals."""
    refs = {}
    for values in new_rows:
        refs.setdefault(values[_CARD] * 256 + values[_GENERATION], []).append(values)
    known = {}
    for condition, values in dbmod.in_lists(conn, refs):
        known.update(conn.execute("SELECT card_ref, max_tap_counter FROM card_counters WHERE card_ref %s"
                                  % condition, values).fetchall())
    anomalies = []
    for ref, taps in refs.items():
        highest = known.get(ref)
        for values in taps:
            counter = values[_COUNTER]
            if highest is None:
                highest = counter
                continue
            expected = highest + 1
            if counter == highest:
                kind = "repeat"
            elif counter > expected:
                kind = "gap"
            elif counter < highest:
                kind = "late"
            else:
                kind = None
            if kind is not None:
                anomalies.append((values[_CARD], values[_GENERATION], kind, expected, counter,
                                  values[_TERMINAL], values[_SEQ], now_ms))
            if counter > highest:
                highest = counter
        known[ref] = highest
    dbmod.write_rows(conn, UPSERT_CARD_COUNTERS, [(ref, known[ref]) for ref in refs])
    if anomalies:
        conn.executemany(INSERT_COUNTER_ANOMALIES_SQL, anomalies)
