"""发卡/补卡任务: the hall page asks for a card, the issuing station (`ykt hall station`) writes it.

    create(conn, account_id, fee_source, requested_by, requested_user_id=0, station=None) -> job
    get(conn, job_id) / open_job(conn, account_id) / listing(conn, person_id) / next_job(conn, station)
    claim(conn, job_id, station, uid) -> {job, identity, name}     a blank card checked: card allocated, fee once
    complete(conn, job_id, station, receipt=None) -> job            the card is written
    fail(conn, job_id, station, zh, en) -> job                      the write tore: that card is void
    retry(conn, job_id, fee_source=None) -> job                     a failed job waits for a new blank card
    cancel(conn, job_id, who) -> job                                before any card was written
    abandon(conn, job_id, who) -> job                               a station silent mid-write: card void
    recover(conn, station) -> [job]                                 what the station left half-written

A job moves only along TRANSITIONS, each move a conditional UPDATE on the status it leaves, so two
stations never take the same job and a cancel never lands on a job being written. The reissue fee is
booked on the job's first card under the transfer id fee/card-job/<id>; every later card of the same
job (after a torn write, a station restart, another station) is allocated with the fee already paid,
so the fee is booked once per job. A card whose write tore, or whose station stopped mid-write, is
reported lost at once (denied on every terminal), as `ykt hall card-issue --reader` does today.

The station itself (firmware/apps/issuing.py) imports no server module: `StationDesk` is the face of
this module that the command line hands to it.
"""
from sync_server import db as dbmod, registry
from sync_server.services import ServiceError, cards, now, person_row, register_messages, tx

KINDS = ("issue", "reissue")
STATUSES = ("pending", "writing", "done", "failed", "cancelled")
OPEN_STATUSES = ("pending", "writing", "failed")
TRANSITIONS = {
    "pending": ("writing", "failed", "cancelled"),     # a station took it / the account's rules refused / cancel
    "writing": ("done", "failed"),                     # written / torn or interrupted
    "failed": ("pending", "cancelled"),                # retry with a new blank card / give up (no fee booked)
    "done": (),
    "cancelled": (),
}
MAX_STATION_CHARS = 40
STATUS_NAMES = {"pending": ("等待发卡机", "waiting for a station"), "writing": ("正在写卡", "writing the card"),
                "done": ("已完成", "done"), "failed": ("失败", "failed"), "cancelled": ("已取消", "cancelled")}
KIND_NAMES = {"issue": ("发卡", "first card"), "reissue": ("补卡", "reissue")}
# the staff action log's names for what the hall does with card jobs (the receipt is "issue" / "reissue")
ACTION_NAMES = {"issue": ("发卡", "card issue"), "card_job": ("提交发卡/补卡任务", "card job asked"),
                "card_job_retry": ("重试发卡/补卡任务", "card job retried"),
                "card_job_cancel": ("取消发卡/补卡任务", "card job cancelled"),
                "card_job_abandon": ("中止无响应的写卡", "stuck card write abandoned")}
MAX_STATIONS_LISTED = 20
# A write takes seconds; a job still `writing` this long after its station took it has a station that
# stopped (unplugged, crashed) and may never come back to recover it: the hall may abandon it.
STUCK_WRITING_MS = 2 * 60 * 1000
# Refusals about the card on the reader, not the account: the job waits for another blank card.
CARD_REFUSALS = ("bad_uid", "uid_in_use")

register_messages({
    "job_unknown": (404, "发卡任务 #%d 不存在", "card job #%d does not exist"),
    "job_open": (409, "该账户已有未完成的发卡/补卡任务 #%d", "the account already has an unfinished card job #%d"),
    "job_taken": (409, "发卡任务 #%d 已被其他发卡机领取或已取消", "card job #%d was taken by another station or cancelled"),
    "job_not_writing": (409, "发卡任务 #%d 不在本发卡机写卡中", "card job #%d is not being written at this station"),
    "job_not_cancellable": (409, "发卡任务 #%d 已开始写卡或已结束，不能取消",
                            "card job #%d is being written or is over: it cannot be cancelled"),
    "job_fee_booked": (409, "发卡任务 #%d 的补卡费已收取，不能取消：请换一张空白卡重试",
                       "the fee of card job #%d is booked: it cannot be cancelled; retry with a new blank card"),
    "job_not_stuck": (409, "发卡任务 #%d 不在写卡中，或发卡机仍可能在写卡（%d 分钟内），请稍候",
                      "card job #%d is not being written, or its station may still be writing (within %d minutes)"),
    "job_not_failed": (409, "发卡任务 #%d 没有失败，无需重试", "card job #%d has not failed: nothing to retry"),
    "bad_station": (400, "发卡机名称应为 1 至 %d 个字符", "the station name is 1 to %d characters"),
})

_COLUMNS = ("id", "person_id", "account_id", "kind", "fee_source", "requested_by", "requested_user_id", "station",
            "status", "reason_zh", "reason_en", "claimed_by", "attempts", "card_number", "generation", "uid",
            "fee_fen", "fee_transfer_id", "staff_action_id", "created_ms", "updated_ms")
_SELECT = ("SELECT %s, p.name, p.staff_number FROM card_jobs j JOIN persons p ON p.id = j.person_id "
           % ", ".join("j." + column for column in _COLUMNS))


def check_station(station):
    """A station name as shown to clerks: 1-40 printable characters."""
    if not isinstance(station, str) or not 0 < len(station.strip()) <= MAX_STATION_CHARS \
            or not station.isprintable():
        raise ServiceError("bad_station", MAX_STATION_CHARS)
    return station.strip()


def _job(row):
    job = dict(zip(_COLUMNS + ("name", "staff_number"), row))
    job["uid"] = bytes(job["uid"]).hex() if job["uid"] is not None else None
    return job


def get(conn, job_id):
    row = conn.execute(_SELECT + "WHERE j.id = ?", (job_id,)).fetchone()
    if row is None:
        raise ServiceError("job_unknown", job_id)
    return _job(row)


def open_job(conn, account_id):
    """The account's unfinished job (pending, writing or failed), or None."""
    row = conn.execute(_SELECT + "WHERE j.account_id = ? AND j.status IN ('pending', 'writing', 'failed')",
                       (account_id,)).fetchone()
    return None if row is None else _job(row)


def listing(conn, person_id, limit=10):
    """The person's jobs, newest first."""
    rows = conn.execute(_SELECT + "WHERE j.person_id = ? ORDER BY j.id DESC LIMIT ?", (person_id, limit))
    return [_job(row) for row in rows]


def stations_seen(conn):
    """The names of the stations that have taken jobs, for the hall page's choice of station."""
    return [row[0] for row in conn.execute("SELECT DISTINCT claimed_by FROM card_jobs WHERE claimed_by IS NOT NULL "
                                           "ORDER BY claimed_by LIMIT ?", (MAX_STATIONS_LISTED,))]


def next_job(conn, station):
    """The oldest pending job this station may take (asked for it by name, or for any station)."""
    row = conn.execute(_SELECT + "WHERE j.status = 'pending' AND (j.station IS NULL OR j.station = ?) "
                       "ORDER BY j.id LIMIT 1", (station,)).fetchone()
    return None if row is None else _job(row)


def fee_due_fen(conn, job):
    """What the job will book when its card is allocated: the fee, unless booked already or a first card."""
    if job["kind"] != "reissue" or job["fee_transfer_id"] is not None:
        return 0
    return dbmod.setting(conn, "reissue_fee_fen")


def _move(conn, job_id, leaving, arriving, now_ms, refusal, **fields):
    """One step of TRANSITIONS, only if the job is still in `leaving` (else ServiceError `refusal`)."""
    assert arriving in TRANSITIONS[leaving], "card job %s -> %s" % (leaving, arriving)
    names = sorted(fields)
    changed = conn.execute("UPDATE card_jobs SET status = ?, updated_ms = ?%s WHERE id = ? AND status = ?"
                           % "".join(", %s = ?" % name for name in names),
                           [arriving, now_ms] + [fields[name] for name in names] + [job_id, leaving]).rowcount
    if changed != 1:
        raise ServiceError(refusal, job_id)


def create(conn, account_id, fee_source, requested_by, requested_user_id=0, station=None, now_ms=None):
    """A new job for the account: a first card (no fee) when it has none, else a reissue paid from
    `fee_source` (balance or cash; a balance that cannot pay is refused now, not at the station)."""
    now_ms = now(now_ms)
    station = check_station(station) if station else None
    with tx(conn):
        holder = person_row(conn, account_id)
        existing = open_job(conn, account_id)
        if existing is not None:
            raise ServiceError("job_open", existing["id"])
        has_card = conn.execute("SELECT 1 FROM cards WHERE account_id = ? LIMIT 1", (account_id,)).fetchone()
        kind = "reissue" if has_card else "issue"
        if kind == "issue":
            fee_source = "none"
        else:
            fee_fen = dbmod.setting(conn, "reissue_fee_fen")
            if fee_fen > 0 or fee_source not in cards.FEE_SOURCES:
                cards.fee_payer(conn, holder, account_id, fee_fen, fee_source)
        job_id = conn.execute(
            "INSERT INTO card_jobs (person_id, account_id, kind, fee_source, requested_by, requested_user_id, "
            "station, status, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
            (holder["id"], account_id, kind, fee_source, requested_by, requested_user_id, station, now_ms,
             now_ms)).fetchone()[0]
        return get(conn, job_id)


def claim(conn, job_id, station, uid, now_ms=None):
    """A station has a blank card (`uid`) for the job: pending -> writing, the card allocated, the fee
    booked if this is the job's first fee. Returns {job, identity, name} to write.

    Refused with the job untouched when another station took it (job_taken) or the card cannot be
    used (CARD_REFUSALS: the job waits for another card); any other refusal is the account's (a
    balance that no longer pays the fee, ...): the job is failed with that reason, nothing booked.
    """
    assert not conn.in_transaction, "a claim owns its transaction: a refusal is recorded after the rollback"
    station = check_station(station)
    now_ms = now(now_ms)
    try:
        with dbmod.transaction(conn):
            job = get(conn, job_id)
            _move(conn, job_id, "pending", "writing", now_ms, "job_taken", claimed_by=station)
            issued = _allocate(conn, job, uid, now_ms)
            identity = issued["identity"]
            fee_fen = issued.get("fee_fen", 0)
            conn.execute("UPDATE card_jobs SET attempts = attempts + 1, card_number = ?, generation = ?, uid = ?, "
                         "fee_fen = fee_fen + ?, fee_transfer_id = COALESCE(fee_transfer_id, ?), reason_zh = NULL, "
                         "reason_en = NULL WHERE id = ?",
                         (identity.card_number, identity.generation, bytes(uid), fee_fen,
                          issued.get("fee_transfer_id"), job_id))
            return {"job": get(conn, job_id), "identity": identity, "name": issued["name"]}
    except registry.HallError as error:
        if getattr(error, "code", None) not in CARD_REFUSALS + ("job_taken", "job_unknown"):
            _refuse(conn, job_id, error, now_ms)
        raise


def _allocate(conn, job, uid, now_ms):
    """The job's next card: a first card, or the next generation with the fee booked on the first."""
    fee_paid = job["kind"] == "issue" or job["fee_transfer_id"] is not None
    if job["kind"] == "issue" and not conn.execute("SELECT 1 FROM cards WHERE account_id = ? LIMIT 1",
                                                   (job["account_id"],)).fetchone():
        return cards.issue_card(conn, job["account_id"], uid, job["requested_by"], now_ms=now_ms)
    return cards.reissue(conn, job["account_id"], uid, job["requested_by"], job["fee_source"], now_ms=now_ms,
                         fee_transfer_id="fee/card-job/%d" % job["id"], fee_paid=fee_paid)


def _refuse(conn, job_id, error, now_ms):
    """pending -> failed with the refusal's text (no card was allocated, nothing booked)."""
    try:
        with dbmod.transaction(conn):
            _move(conn, job_id, "pending", "failed", now_ms, "job_taken", reason_zh=error.zh, reason_en=error.en)
    except ServiceError:
        pass                                # cancelled meanwhile: nothing to record


def complete(conn, job_id, station, receipt=None, now_ms=None):
    """The card is written: writing -> done. `receipt(conn, job)` (the staff action log line, in the same
    transaction) returns the receipt number kept on the job."""
    now_ms = now(now_ms)
    with tx(conn):
        job = get(conn, job_id)
        if job["claimed_by"] != station:
            raise ServiceError("job_not_writing", job_id)
        _move(conn, job_id, "writing", "done", now_ms, "job_not_writing")
        if receipt is not None:
            action_id = receipt(conn, get(conn, job_id))
            conn.execute("UPDATE card_jobs SET staff_action_id = ? WHERE id = ?", (action_id, job_id))
        return get(conn, job_id)


def fail(conn, job_id, station, reason_zh, reason_en, now_ms=None):
    """The write tore (or the station stopped mid-write): writing -> failed, that card reported lost so
    it never pays; the job can be retried with a new blank card, its fee already booked."""
    now_ms = now(now_ms)
    with tx(conn):
        job = get(conn, job_id)
        if job["claimed_by"] != station:
            raise ServiceError("job_not_writing", job_id)
        _move(conn, job_id, "writing", "failed", now_ms, "job_not_writing",
              reason_zh="%s；卡号 %d 已作废（挂失），请换一张空白卡重试" % (reason_zh, job["card_number"]),
              reason_en="%s; card %d is void (reported lost): retry with a new blank card"
              % (reason_en, job["card_number"]))
        _void(conn, job, now_ms)
        return get(conn, job_id)


def _void(conn, job, now_ms):
    active = conn.execute("SELECT 1 FROM cards WHERE card_number = ? AND generation = ? AND status = 'active'",
                          (job["card_number"], job["generation"])).fetchone()
    if active:
        registry.report_loss(conn, job["card_number"], now_ms)


def recover(conn, station, now_ms=None):
    """Jobs this station left `writing` (it was stopped mid-write): each card voided, each job failed."""
    rows = conn.execute("SELECT id FROM card_jobs WHERE status = 'writing' AND claimed_by = ? ORDER BY id",
                        (station,)).fetchall()
    return [fail(conn, job_id, station, "发卡机在写卡时中断", "the station stopped while writing", now_ms)
            for (job_id,) in rows]


def retry(conn, job_id, fee_source=None, now_ms=None):
    """failed -> pending: the next station takes it with a new blank card. Until a fee is booked the
    fee source may change (a balance that could not pay: cash instead)."""
    now_ms = now(now_ms)
    with tx(conn):
        job = get(conn, job_id)
        if job["status"] != "failed":
            raise ServiceError("job_not_failed", job_id)
        fields = {}
        if fee_source and job["kind"] == "reissue" and job["fee_transfer_id"] is None:
            if fee_source not in cards.FEE_SOURCES:
                raise ServiceError("bad_fee_source")
            fields["fee_source"] = fee_source
        _move(conn, job_id, "failed", "pending", now_ms, "job_not_failed", **fields)
        return get(conn, job_id)


def cancel(conn, job_id, who, now_ms=None):
    """pending (or failed with no fee booked) -> cancelled; a job whose fee is booked is retried, not
    cancelled (its money is in the ledger and the cash desk's close)."""
    now_ms = now(now_ms)
    with tx(conn):
        job = get(conn, job_id)
        if job["status"] not in ("pending", "failed"):
            raise ServiceError("job_not_cancellable", job_id)
        if job["fee_transfer_id"] is not None:
            raise ServiceError("job_fee_booked", job_id)
        _move(conn, job_id, job["status"], "cancelled", now_ms, "job_not_cancellable",
              reason_zh="%s 已取消" % who, reason_en="cancelled by %s" % who)
        return get(conn, job_id)


def is_stuck(job, now_ms=None):
    """True when the job has been `writing` longer than any write takes (see STUCK_WRITING_MS)."""
    return job["status"] == "writing" and now(now_ms) - job["updated_ms"] >= STUCK_WRITING_MS


def abandon(conn, job_id, who, now_ms=None):
    """writing -> failed for a job whose station went silent mid-write (is_stuck): its card is voided
    (reported lost) as a torn write is, so the half-written card never pays, and the job can be
    retried at another station with its fee already booked. Should the station come back, its
    `written` is refused (the job is no longer its to finish) and the card it held stays void."""
    now_ms = now(now_ms)
    with tx(conn):
        job = get(conn, job_id)
        if not is_stuck(job, now_ms):
            raise ServiceError("job_not_stuck", job_id, STUCK_WRITING_MS // 60000)
        return fail(conn, job_id, job["claimed_by"], "发卡机 %s 写卡时无响应，%s 已中止" % (job["claimed_by"], who),
                    "station %s went silent while writing; %s abandoned it" % (job["claimed_by"], who), now_ms)


class StationDesk:
    """The database side of one issuing station, as firmware/apps/issuing.py drives it: that module
    imports no server code (DESIGN.md section 6), so the command line hands it this object."""

    Refused = registry.HallError

    def __init__(self, conn, station, receipt=None):
        self.conn = conn
        self.station = check_station(station)
        self.receipt = receipt

    def recover(self):
        return recover(self.conn, self.station)

    def next_job(self):
        return next_job(self.conn, self.station)

    def is_pending(self, job_id):
        return get(self.conn, job_id)["status"] == "pending"

    def claim(self, job_id, uid):
        """(identity, name) of the card to write; Refused (zh / en) when the job or card cannot go on."""
        claimed = claim(self.conn, job_id, self.station, uid)
        return claimed["identity"], claimed["name"]

    def written(self, job_id):
        return complete(self.conn, job_id, self.station, self.receipt)

    def torn(self, job_id, reason_zh, reason_en):
        return fail(self.conn, job_id, self.station, reason_zh, reason_en)
