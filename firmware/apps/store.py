"""The terminal's durable state in one SQLite file: journal, deny list, balance cache, config, counters.

DESIGN.md section 3: success is shown only after the tap's record is committed, so the journal runs
in WAL mode with `synchronous=FULL` (a commit is on disk when `append_purchase` returns) and every
write is one explicit transaction. Sequence numbers are gap-free per terminal and never reused:
the last one handed out lives in `meta`, not in the journal (whose old rows get pruned).

    table             what                                            bound
    ---------------   ---------------------------------------------   --------------------------
    journal           seq, record bytes (records.py)                  max_unacked unacked rows;
                                                                      keep_acked acked rows kept
                                                                      for re-collection (补采)
    deny              active deny entries (kind, ref, reason)         max_deny_entries
    card_generation   newest generation seen per card number          (one row per card number)
    balance           per account+wallet at the server's version      max_balance_rows
    paycode_use       the payment codes journaled (replay cache,      rows of the last day, pruned
                      offline cap per credential)                     with the journal
    activation        an activation unit's journaled old serials      one row per old card
                      (one record per old card, whatever the taps)    (MAX_TICKETS)
    ticket            an activation unit's ticket cache, by serial    MAX_TICKETS
    meta              versions, request counter, clock, config        fixed keys

The server acknowledges the highest contiguous seq it holds, so the acknowledged rows are always a
prefix of the journal: `acked_seq` in meta says which, and last_seq - acked_seq rows wait to be sent
(no per-row flag to update, nothing per tap that walks the backlog).

Acknowledged is not yet reflected: the answer that acks our records may carry only the first page of
balance changes (the server pages them), and the account's new balance can come several answers
later. `reflected_seq` is the acked_seq of the last answer whose balance pages were complete; the
balance view counts this terminal's records above it as its own spend the cache does not show yet,
and pruning keeps them.

One TerminalStore per thread (the POS shell and the sync thread each open their own); SQLite's
locking serialises writers, `BEGIN IMMEDIATE` makes each read-modify-write atomic.
"""
import json
import sqlite3

from firmware.core import clock as clock_module
from firmware.core import decide, paycode, pos, protocol, records

KEEP_ACKED_ROWS = 2000
MAX_UNACKED_ROWS = 100000
MAX_DENY_ENTRIES = 1000000
MAX_BALANCE_ROWS = 1000000
MAX_CONFIG_BYTES = 64 * 1024
MAX_RESEND_SPAN = 100000
MAX_TICKETS = 500000                    # a campus's old cards, with room
TICKET_FIELDS = ("serial", "category", "card_number", "generation", "account_id", "holder_category",
                 "expiry_yyyymmdd", "name")
PAYCODE_USE_KEEP_MS = 86400 * 1000      # far beyond a code's live window (paycode.live_until_ms)
BUSY_TIMEOUT_MS = 10000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    record BLOB NOT NULL,
    account_id INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    time_ms INTEGER NOT NULL
);
DROP INDEX IF EXISTS journal_unacked_account;
CREATE INDEX IF NOT EXISTS journal_account_seq ON journal (account_id, seq);
CREATE TABLE IF NOT EXISTS deny (
    kind TEXT NOT NULL,
    ref INTEGER NOT NULL,
    reason,
    PRIMARY KEY (kind, ref)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS card_generation (
    card_number INTEGER PRIMARY KEY,
    newest_generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS balance (
    account_id INTEGER NOT NULL,
    wallet TEXT NOT NULL,
    balance_fen INTEGER NOT NULL,
    spent_today_fen INTEGER NOT NULL,
    single_limit_fen INTEGER,
    daily_limit_fen INTEGER,
    day_yyyymmdd INTEGER NOT NULL,
    PRIMARY KEY (account_id, wallet)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS paycode_use (
    seq INTEGER PRIMARY KEY,
    credential_id INTEGER NOT NULL,
    time_step INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    offline INTEGER NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS paycode_use_credential ON paycode_use (credential_id, seq);
CREATE TABLE IF NOT EXISTS activation (
    serial INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ticket (
    serial INTEGER PRIMARY KEY,
    ticket TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
"""

_META_DEFAULTS = {
    "last_seq": 0,
    "acked_seq": 0,
    "reflected_seq": 0,
    "deny_version": 0,
    "balance_version": 0,
    "config_version": 0,
    "request_counter": 0,
    "first_sync_done": 0,
    "clock_floor_ms": 0,
    "clock_offset_ms": 0,
    "resend_from_seq": 0,
    "resend_to_seq": 0,
    "terminal_revoked": 0,
    "seq_jumped_from": 0,
    "config_json": "{}",
    "water_progress": "",           # a water dispenser's session in progress (JSON), "" when none
    "ticket_version": 0,            # an activation unit's ticket cache: the server's version it holds
}


class StoreError(Exception):
    """The store refused a write (journal full, limits exceeded); nothing was changed."""


class JournalFull(StoreError):
    pass


class MalformedAnswer(StoreError, ValueError):
    """A sync answer without the shapes protocol.py gives; refused before anything is applied."""


class ApplyResult:
    """What the sync client needs from an applied answer."""
    __slots__ = ("acked_seq", "config_changed", "set_time_ms", "more")

    def __init__(self):
        self.acked_seq = 0
        self.config_changed = False
        self.set_time_ms = None
        self.more = False


class TerminalStore:
    def __init__(self, path, keep_acked=KEEP_ACKED_ROWS, max_unacked=MAX_UNACKED_ROWS,
                 max_deny_entries=MAX_DENY_ENTRIES, max_balance_rows=MAX_BALANCE_ROWS):
        assert keep_acked >= 0 and max_unacked > 0
        self.path = path
        self.keep_acked = keep_acked
        self.max_unacked = max_unacked
        self.max_deny_entries = max_deny_entries
        self.max_balance_rows = max_balance_rows
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing commits behind our back.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000.0,
                                   check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        assert mode.lower() == "wal", "SQLite refused WAL mode: %s" % mode
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)     # idempotent; executescript must run outside a transaction
        with self._transaction():
            # A file from before reflected_seq existed took acked as reflected: start from there.
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) SELECT 'reflected_seq', value FROM meta "
                             "WHERE key = 'acked_seq'")
            for key, value in _META_DEFAULTS.items():
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self):
        self._db.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self._db)

    def _meta(self, key):
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        assert row is not None, "meta key %s missing" % key
        return row[0]

    def _set_meta(self, key, value):
        assert key in _META_DEFAULTS
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # -- journal ---------------------------------------------------------------------------------

    def append_purchase(self, record_fields, time_ms, clock_floor_ms=None):
        """Journal one purchase durably; returns its seq. Only after this returns may success show.

        record_fields are encode_purchase's keyword arguments without seq and time_ms. The clock
        floor is stored in the same transaction, so the time used can never be handed out again.
        """
        with self._transaction():
            unacked = self._meta("last_seq") - self._meta("acked_seq")
            if unacked >= self.max_unacked:
                raise JournalFull("终端存储已满 / journal holds %d unacknowledged records" % unacked)
            seq = self._meta("last_seq") + 1
            record = records.encode_purchase(seq=seq, time_ms=time_ms, **record_fields)
            self._db.execute(
                "INSERT INTO journal (seq, record, account_id, amount_fen, time_ms) VALUES (?, ?, ?, ?, ?)",
                (seq, record, record_fields["account_id"], record_fields["amount_fen"], time_ms))
            self._set_meta("last_seq", seq)
            if clock_floor_ms is not None:
                self._set_meta("clock_floor_ms", max(clock_floor_ms, self._meta("clock_floor_ms")))
        return seq

    def append_paycode(self, record_fields, time_ms, clock_floor_ms=None):
        """Journal one sale paid by a payment code durably, and remember the code's use in the same
        transaction (the replay cache is rebuilt from it after a restart, and the certificate's offline
        cap counts it); returns its seq. record_fields are encode_paycode's arguments without seq and
        time_ms."""
        with self._transaction():
            unacked = self._meta("last_seq") - self._meta("acked_seq")
            if unacked >= self.max_unacked:
                raise JournalFull("终端存储已满 / journal holds %d unacknowledged records" % unacked)
            seq = self._meta("last_seq") + 1
            record = records.encode_paycode(seq=seq, time_ms=time_ms, **record_fields)
            self._db.execute(
                "INSERT INTO journal (seq, record, account_id, amount_fen, time_ms) VALUES (?, ?, ?, ?, ?)",
                (seq, record, record_fields["account_id"], record_fields["amount_fen"], time_ms))
            self._db.execute(
                "INSERT INTO paycode_use (seq, credential_id, time_step, counter, amount_fen, offline, time_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, record_fields["credential_id"], record_fields["time_step"], record_fields["counter"],
                 record_fields["amount_fen"], 1 if record_fields.get("flags", 0) & records.FLAG_OFFLINE else 0,
                 time_ms))
            self._set_meta("last_seq", seq)
            if clock_floor_ms is not None:
                self._set_meta("clock_floor_ms", max(clock_floor_ms, self._meta("clock_floor_ms")))
        return seq

    def append_activation(self, record_fields, time_ms, clock_floor_ms=None):
        """Journal an old card's activation durably, once per old serial: (seq, new). A serial this
        unit journaled before gets its first seq back and nothing is written (a resumed tap, the same
        card again). record_fields are encode_activation's arguments without seq and time_ms."""
        serial = record_fields["serial"]
        with self._transaction():
            row = self._db.execute("SELECT seq FROM activation WHERE serial = ?", (serial,)).fetchone()
            if row is not None:
                return row[0], False
            unacked = self._meta("last_seq") - self._meta("acked_seq")
            if unacked >= self.max_unacked:
                raise JournalFull("终端存储已满 / journal holds %d unacknowledged records" % unacked)
            seq = self._meta("last_seq") + 1
            record = records.encode_activation(seq=seq, time_ms=time_ms, **record_fields)
            # the journal's amount column is for a POS's own spend: an activation spends nothing
            self._db.execute(
                "INSERT INTO journal (seq, record, account_id, amount_fen, time_ms) VALUES (?, ?, ?, 0, ?)",
                (seq, record, record_fields["account_id"], time_ms))
            self._db.execute("INSERT INTO activation (serial, seq) VALUES (?, ?)", (serial, seq))
            self._set_meta("last_seq", seq)
            if clock_floor_ms is not None:
                self._set_meta("clock_floor_ms", max(clock_floor_ms, self._meta("clock_floor_ms")))
        return seq, True

    def activation_seq(self, serial):
        """The seq of this unit's record of an old serial, or None."""
        row = self._db.execute("SELECT seq FROM activation WHERE serial = ?", (serial,)).fetchone()
        return row[0] if row else None

    def activation_count(self):
        return self._db.execute("SELECT count(*) FROM activation").fetchone()[0]

    def ticket(self, serial):
        """The cached ticket of an old serial ({TICKET_FIELDS}) or None."""
        row = self._db.execute("SELECT ticket FROM ticket WHERE serial = ?", (serial,)).fetchone()
        return json.loads(row[0]) if row else None

    def ticket_version(self):
        return self._meta("ticket_version")

    def save_tickets(self, tickets, version):
        """One page of the server's ticket cache: tickets ({TICKET_FIELDS}, or {serial, withdrawn}) and
        the version it brings the cache to; returns how many were kept. A malformed entry refuses the
        whole page (MalformedAnswer), nothing written."""
        rows, gone = [], []
        for entry in tickets:
            if not isinstance(entry, dict) or not _is_int(entry.get("serial")):
                raise MalformedAnswer("ticket entry without a serial")
            if entry.get("withdrawn") is True:
                gone.append((entry["serial"],))
                continue
            if not all(_is_int(entry.get(name)) for name in TICKET_FIELDS if name != "name") \
                    or not isinstance(entry.get("name"), str) or len(entry["name"]) > 40:
                raise MalformedAnswer("ticket entry for serial %r is malformed" % (entry.get("serial"),))
            rows.append((entry["serial"], json.dumps({name: entry[name] for name in TICKET_FIELDS},
                                                     ensure_ascii=False)))
        if not _is_int(version):
            raise MalformedAnswer("ticket version is not an integer")
        with self._transaction():
            count = self._db.execute("SELECT count(*) FROM ticket").fetchone()[0]
            if count + len(rows) > MAX_TICKETS:
                raise StoreError("票据缓存已满 / ticket cache holds %d tickets" % count)
            self._db.executemany("INSERT OR REPLACE INTO ticket (serial, ticket) VALUES (?, ?)", rows)
            self._db.executemany("DELETE FROM ticket WHERE serial = ?", gone)
            self._set_meta("ticket_version", max(version, self._meta("ticket_version")))
        return len(rows)

    def paycode_uses_since(self, since_ms, limit=paycode.MAX_REPLAY_ENTRIES):
        """[(credential_id, time_step, counter)] of the codes journaled since `since_ms`, newest first."""
        return self._db.execute("SELECT credential_id, time_step, counter FROM paycode_use WHERE time_ms >= ? "
                                "ORDER BY seq DESC LIMIT ?", (since_ms, limit)).fetchall()

    def paycode_facts(self, cert, terminal_id, today_yyyymmdd):
        """What decide() and the POS need for a payment code (pos.PayCodeFacts), read as of one moment."""
        self._db.execute("BEGIN")
        try:
            tap = pos.TapFacts(self.deny_view(cert.card_number, cert.card_generation, cert.account_id, terminal_id),
                               self.account_view(cert.account_id, today_yyyymmdd))
            credential = self._deny_reason(protocol.DENY_CREDENTIAL, cert.credential_id)
            certificate = self._deny_reason(protocol.DENY_CERTIFICATE, cert.cert_serial)
            # offline sales under this credential the server has not reflected in the balances yet
            offline_fen = self._db.execute(
                "SELECT coalesce(sum(amount_fen), 0) FROM paycode_use WHERE credential_id = ? AND offline = 1 "
                "AND seq > (SELECT value FROM meta WHERE key = 'reflected_seq')", (cert.credential_id,)).fetchone()[0]
            return pos.PayCodeFacts(tap, credential, certificate, offline_fen)
        finally:
            self._db.execute("COMMIT")

    def _deny_reason(self, kind, ref):
        row = self._db.execute("SELECT reason FROM deny WHERE kind = ? AND ref = ?", (kind, ref)).fetchone()
        return None if row is None else (row[0] if row[0] is not None else "denied")

    def append_water(self, record_fields, time_ms, clock_floor_ms=None, grant=False):
        """Journal one water session durably and clear the session's persisted progress in the same
        transaction (firmware/core/dispenser.py: else a power cut between the two would settle the
        session twice at power-up); returns its seq. record_fields are encode_water's keyword
        arguments without seq and time_ms."""
        with self._transaction():
            unacked = self._meta("last_seq") - self._meta("acked_seq")
            if unacked >= self.max_unacked:
                raise JournalFull("终端存储已满 / journal holds %d unacknowledged records" % unacked)
            seq = self._meta("last_seq") + 1
            record = records.encode_water(seq=seq, time_ms=time_ms, grant=grant, **record_fields)
            self._db.execute(
                "INSERT INTO journal (seq, record, account_id, amount_fen, time_ms) VALUES (?, ?, ?, ?, ?)",
                (seq, record, record_fields["account_id"], record_fields["amount_fen"], time_ms))
            self._set_meta("last_seq", seq)
            self._set_meta("water_progress", "")
            if clock_floor_ms is not None:
                self._set_meta("clock_floor_ms", max(clock_floor_ms, self._meta("clock_floor_ms")))
        return seq

    def save_water_progress(self, progress):
        """Persist a water session's progress (a JSON-able list), or clear it with None; durable on return."""
        text = "" if progress is None else json.dumps(progress)
        assert len(text) <= 1024
        with self._transaction():
            self._set_meta("water_progress", text)

    def water_progress(self):
        """The persisted progress of a session cut by the power (as saved), or None."""
        text = self._meta("water_progress")
        return json.loads(text) if text else None

    def last_seq(self):
        return self._meta("last_seq")

    def acked_seq(self):
        return self._meta("acked_seq")

    def unacked_count(self):
        # Unacknowledged rows are exactly the seqs above acked_seq: never pruned, gap-free.
        return self._meta("last_seq") - self._meta("acked_seq")

    def journal(self, from_seq=1, limit=1000):
        """Stored records from from_seq on: [(seq, record bytes, acked 0/1)]; bounded by limit."""
        assert 0 < limit <= 100000
        return self._db.execute(
            "SELECT seq, record, seq <= (SELECT value FROM meta WHERE key = 'acked_seq') FROM journal "
            "WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)).fetchall()

    def upload_batch(self, limit=protocol.MAX_BATCH_RECORDS):
        """The records for the next request: any range the server asked for again, then unacked; by seq."""
        assert 0 < limit <= protocol.MAX_BATCH_RECORDS
        resend_from, resend_to = self._meta("resend_from_seq"), self._meta("resend_to_seq")
        rows = self._db.execute(
            "SELECT seq, record FROM journal WHERE seq > ? OR seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
            (self._meta("acked_seq"), resend_from, resend_to, limit)).fetchall()
        return [(seq, bytes(record)) for seq, record in rows]

    # -- what decide() needs -------------------------------------------------------------------

    def deny_view(self, card_number, generation, account_id, terminal_id):
        reason = self._deny_reason

        newest = self._db.execute("SELECT newest_generation FROM card_generation WHERE card_number = ?",
                                  (card_number,)).fetchone()
        revoked = bool(self._meta("terminal_revoked")) or \
            reason(protocol.DENY_TERMINAL, terminal_id) is not None
        return decide.DenyView(revoked, reason(protocol.DENY_CARD, protocol.card_deny_ref(card_number, generation)),
                               reason(protocol.DENY_CARD_NUMBER, card_number),
                               reason(protocol.DENY_ACCOUNT, account_id), newest[0] if newest else 0)

    def tap_facts(self, card_number, generation, account_id, terminal_id, today_yyyymmdd):
        """(DenyView, AccountView) for one tap, read as of one moment.

        The sync thread commits answers at any time; one read transaction (WAL: a snapshot from its
        first read on) keeps the cached balances and our own unreflected spend from two moments
        apart, where an answer that moved spend into the balances would be counted by neither.
        """
        self._db.execute("BEGIN")
        try:
            return (self.deny_view(card_number, generation, account_id, terminal_id),
                    self.account_view(account_id, today_yyyymmdd))
        finally:
            self._db.execute("COMMIT")      # read only: this just ends the snapshot

    def account_view(self, account_id, today_yyyymmdd):
        rows = self._db.execute(
            "SELECT wallet, balance_fen, spent_today_fen, single_limit_fen, daily_limit_fen, day_yyyymmdd "
            "FROM balance WHERE account_id = ?", (account_id,)).fetchall()
        # "Unacked" for decide(): our own spend the cached balances do not show yet (see the top).
        unacked_fen, unacked_count = self._db.execute(
            "SELECT coalesce(sum(amount_fen), 0), count(*) FROM journal "
            "WHERE account_id = ? AND seq > (SELECT value FROM meta WHERE key = 'reflected_seq')",
            (account_id,)).fetchone()
        if not rows:
            return decide.AccountView(False, {}, 0, None, None, unacked_fen, unacked_count)
        balances_fen = {}
        spent_today_fen, single_limit_fen, daily_limit_fen = 0, None, None
        for wallet, balance_fen, spent_fen, single_fen, daily_fen, day in rows:
            balances_fen[wallet] = balance_fen
            # The server's spent_today is for the day it was sent; on a new day it starts again.
            if day == today_yyyymmdd:
                spent_today_fen = max(spent_today_fen, spent_fen)
            single_limit_fen = single_fen if single_limit_fen is None else single_limit_fen
            daily_limit_fen = daily_fen if daily_limit_fen is None else daily_limit_fen
        return decide.AccountView(True, balances_fen, spent_today_fen, single_limit_fen, daily_limit_fen,
                                  unacked_fen, unacked_count)

    # -- sync ------------------------------------------------------------------------------------

    def next_request_counter(self, now_ms=0):
        """The counter for the next request, committed before it is used (a replay is never ours).

        At least the terminal clock (ms): the server only needs it to increase, and a new or replaced
        store that started again at 1 would be refused as a replay for good (protocol.py headers).
        """
        with self._transaction():
            counter = max(self._meta("request_counter") + 1, now_ms)
            self._set_meta("request_counter", counter)
        return counter

    def counter_at_least(self, counter):
        """The server has seen `counter` (a refused replay said so): the next one goes above it."""
        with self._transaction():
            self._set_meta("request_counter", max(counter, self._meta("request_counter")))

    def needs_first_sync(self):
        """True for a journal that never wrote a record and never applied an answer.

        Such a store numbers from seq 1, which the server may already hold for this terminal (the
        store was replaced or lost): the first answer's acked_seq moves the numbering past the
        server's, so nothing may be journaled before one answer applied.
        """
        return not self._meta("first_sync_done") and self._meta("last_seq") == 0

    def versions(self):
        return self._meta("deny_version"), self._meta("balance_version"), self._meta("config_version")

    def mark_revoked(self):
        with self._transaction():
            self._set_meta("terminal_revoked", 1)

    def apply_answer(self, answer, today_yyyymmdd, terminal_id, sent_through_seq=0):
        """Apply one sync answer (protocol.py) in ONE transaction: ack, prune, deny, balances, config,
        commands. sent_through_seq is the highest seq the request carried (clears a served resend)."""
        check_answer(answer)
        result = ApplyResult()
        with self._transaction():
            self._apply_ack(answer["acked_seq"], result)
            self._set_meta("first_sync_done", 1)
            self._apply_deny(answer.get("deny") or {}, terminal_id, result)
            balances = answer.get("balances") or {}
            self._apply_balances(balances, today_yyyymmdd, result)
            if not balances.get("more"):
                # Every balance change up to this answer is in the cache now, our acked taps included.
                self._set_meta("reflected_seq", max(self._meta("acked_seq"), self._meta("reflected_seq")))
            self._prune()
            self._apply_config(answer.get("config"), result)
            resend_to = self._meta("resend_to_seq")
            if resend_to and sent_through_seq >= resend_to:
                self._set_meta("resend_from_seq", 0)
                self._set_meta("resend_to_seq", 0)
            elif resend_to and sent_through_seq >= self._meta("resend_from_seq"):
                # A range wider than one batch: the next batch goes on from here, or the batch
                # would restart at the range's start forever and nothing new would ever be sent.
                self._set_meta("resend_from_seq", sent_through_seq + 1)
            for command in answer.get("commands") or ():
                self._apply_command(command, result)
        return result

    def _apply_ack(self, acked_seq, result):
        last_seq = self._meta("last_seq")
        if acked_seq > last_seq:
            # The server holds records this journal never wrote (the journal was replaced or lost):
            # handing those seqs out again would make the server drop new taps as duplicates, so
            # the sequence continues after what the server holds.
            self._set_meta("last_seq", acked_seq)
            self._set_meta("seq_jumped_from", last_seq)
        result.acked_seq = acked_seq
        self._set_meta("acked_seq", max(acked_seq, self._meta("acked_seq")))

    def _prune(self):
        """Drop acknowledged rows beyond the newest keep_acked, never one the balance view still counts."""
        keep_from = self._db.execute(
            "SELECT seq FROM journal WHERE seq <= ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (self._meta("acked_seq"), self.keep_acked)).fetchone()
        if keep_from is not None:
            pruned_through = min(keep_from[0], self._meta("reflected_seq"))
            self._db.execute("DELETE FROM journal WHERE seq <= ?", (pruned_through,))
            # a code's use is kept while the code could still be scanned (the replay cache's window)
            self._db.execute("DELETE FROM paycode_use WHERE seq <= ? AND time_ms < (SELECT max(time_ms) FROM "
                             "paycode_use) - ?", (pruned_through, PAYCODE_USE_KEEP_MS))

    def _apply_deny(self, deny, terminal_id, result):
        entries = deny.get("entries") or ()
        for kind, ref, active, reason in entries:
            if kind == protocol.DENY_CARD:
                card_number, generation = divmod(ref, 256)
                self._db.execute(
                    "INSERT INTO card_generation (card_number, newest_generation) VALUES (?, ?) "
                    "ON CONFLICT (card_number) DO UPDATE SET newest_generation = "
                    "max(newest_generation, excluded.newest_generation)", (card_number, generation))
            if active:
                self._db.execute("INSERT OR REPLACE INTO deny (kind, ref, reason) VALUES (?, ?, ?)",
                                 (kind, ref, reason))
            else:
                self._db.execute("DELETE FROM deny WHERE kind = ? AND ref = ?", (kind, ref))
        if entries:
            count = self._db.execute("SELECT count(*) FROM deny").fetchone()[0]
            if count > self.max_deny_entries:
                raise StoreError("deny list would hold %d entries (bound %d)" % (count, self.max_deny_entries))
        if "version" in deny:
            self._set_meta("deny_version", max(int(deny["version"]), self._meta("deny_version")))
        result.more = result.more or bool(deny.get("more"))

    def _apply_balances(self, balances, today_yyyymmdd, result):
        rows = balances.get("rows") or ()
        for account_id, wallet, balance_fen, spent_today_fen, single_limit_fen, daily_limit_fen in rows:
            self._db.execute(
                "INSERT OR REPLACE INTO balance (account_id, wallet, balance_fen, spent_today_fen, "
                "single_limit_fen, daily_limit_fen, day_yyyymmdd) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (account_id, wallet, balance_fen, spent_today_fen, single_limit_fen, daily_limit_fen,
                 today_yyyymmdd))
        if rows:
            count = self._db.execute("SELECT count(*) FROM balance").fetchone()[0]
            if count > self.max_balance_rows:
                raise StoreError("balance cache would hold %d rows (bound %d)" % (count, self.max_balance_rows))
        if "version" in balances:
            self._set_meta("balance_version", max(int(balances["version"]), self._meta("balance_version")))
        result.more = result.more or bool(balances.get("more"))

    def _apply_config(self, config, result):
        if not config:
            return
        text = json.dumps(config, sort_keys=True, default=_json_default)
        if len(text) > MAX_CONFIG_BYTES:
            raise StoreError("configuration of %d bytes exceeds %d" % (len(text), MAX_CONFIG_BYTES))
        self._set_meta("config_json", text)
        version = config.get("version", config.get("config_version"))
        if isinstance(version, int):
            self._set_meta("config_version", version)
        result.config_changed = True

    def _apply_command(self, command, result):
        op = command.get("op")
        if op == "resend":
            from_seq, to_seq = int(command["from_seq"]), int(command["to_seq"])
            if 1 <= from_seq <= to_seq and to_seq - from_seq <= MAX_RESEND_SPAN:
                self._set_meta("resend_from_seq", from_seq)
                self._set_meta("resend_to_seq", to_seq)
        elif op == "set_time":
            result.set_time_ms = int(command["server_ms"])

    # -- config and clock ------------------------------------------------------------------------

    def config(self):
        return json.loads(self._meta("config_json"))

    def clock(self):
        return clock_module.Clock(self._meta("clock_floor_ms"), self._meta("clock_offset_ms"))

    def save_clock(self, floor_ms, offset_ms, lower_floor=False):
        """lower_floor: after the server's set_time, the floor may go down (core Clock.set_time)."""
        with self._transaction():
            stored_ms = self._meta("clock_floor_ms")
            self._set_meta("clock_floor_ms", floor_ms if lower_floor else max(floor_ms, stored_ms))
            self._set_meta("clock_offset_ms", offset_ms)

    def health(self):
        return {"journal_unacked": self.unacked_count(), "last_seq": self.last_seq(),
                "acked_seq": self.acked_seq(), "seq_jumped_from": self._meta("seq_jumped_from"),
                "deny_entries": self._db.execute("SELECT count(*) FROM deny").fetchone()[0],
                "balance_rows": self._db.execute("SELECT count(*) FROM balance").fetchone()[0]}


def _is_int(value):
    return type(value) is int          # not bool, which is an int too


def _is_int_or_none(value):
    return value is None or type(value) is int


def _check_list(value, what, check_item):
    _require(value is None or isinstance(value, list), what)
    for item in value or ():
        _require(check_item(item), "%s item %r" % (what, item))


def _require(ok, what):
    if not ok:
        raise MalformedAnswer("同步应答格式错误 / malformed sync answer: %s" % what)


def _deny_entry_ok(entry):
    return isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str) and _is_int(entry[1]) \
        and isinstance(entry[2], bool) and (entry[3] is None or isinstance(entry[3], (int, str)))


def _balance_row_ok(row):
    return isinstance(row, list) and len(row) == 6 and _is_int(row[0]) and isinstance(row[1], str) \
        and _is_int(row[2]) and _is_int(row[3]) and _is_int_or_none(row[4]) and _is_int_or_none(row[5])


def _command_ok(command):
    if not isinstance(command, dict) or not isinstance(command.get("op"), str):
        return False
    if command["op"] == "resend":
        return _is_int(command.get("from_seq")) and _is_int(command.get("to_seq"))
    if command["op"] == "set_time":
        return _is_int(command.get("server_ms"))
    return True                        # an op this firmware does not know yet: ignored


def check_answer(answer):
    """Raise MalformedAnswer unless `answer` has protocol.py's answer shapes (types, not values).

    Checked before the transaction starts, so a broken answer (a proxy's page, a server bug) is
    one failed sync, never a half-applied one or a crash of the sync thread.
    """
    _require(isinstance(answer, dict), "not a map")
    _require(_is_int(answer.get("acked_seq")) and answer["acked_seq"] >= 0, "acked_seq")
    _require(_is_int_or_none(answer.get("server_ms")), "server_ms")
    for name, check_item in (("deny", _deny_entry_ok), ("balances", _balance_row_ok)):
        part = answer.get(name)
        _require(part is None or isinstance(part, dict), name)
        part = part or {}
        _require(_is_int_or_none(part.get("version")), "%s version" % name)
        _require(part.get("more") is None or isinstance(part.get("more"), bool), "%s more" % name)
        _check_list(part.get("entries" if name == "deny" else "rows"), name, check_item)
    _require(answer.get("config") is None or isinstance(answer["config"], dict), "config")
    _check_list(answer.get("commands"), "commands", _command_ok)


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError("configuration value %r is not JSON" % (value,))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: all or nothing."""

    def __init__(self, db):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
        return False
