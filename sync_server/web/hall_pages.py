"""Service-hall pages (`/hall/...`) for staff with the `hall` role: find a person, see their cards and
balances, cash recharge, report loss, unfreeze, reissue, and print a receipt.

Each action runs in one transaction together with its line in the staff action log (who, what, to
whom, when), so there is never a change without its log line or a log line without its change. The
log line's id is the receipt number. The cash recharge form carries a one-time key (auth.form_key):
the same form submitted twice books once and both submissions land on the first receipt.

The cash desk (sync_server/services/cash_desk.py): a recharge goes through a confirmation page (person,
card, wallet, amount in yuan) and only 确认充值 there books it; above the cap a second staff member
signs on that page with their password, or approves it later from /hall/approvals; a supervisor
reverses a mistaken one (冲正) with a reason; each clerk closes their shift at /hall/cash-close (结账),
printable at /hall/cash-close/<id>.

Photos (人脸采集 / 证件照采集, sync_server/services/photos.py): the person page shows the person's face
photo and ID photo (未采集 where none), served only to the hall role by /hall/person/<id>/photo/<kind>
(no-store), and takes a new one (the same server checks as the phone app's, source "hall", logged).
发卡/补办 goes through a confirmation page that shows the photos, so the clerk checks who is at the desk;
confirming it makes a card job (services/card_jobs.py) that the issuing station (`ykt hall station`)
carries through: blank card checked, card allocated, fee booked once, card written. The job's page
(/hall/card-job/<id>) follows it (a small poll reloads it when its state changes), cancels it while no
station has taken it, retries it after a torn write, and links to the receipt once done.

Search (find_people) pages through everyone found, with the total, and masks ID numbers. The person
page resets the PIN to the initial one behind an identity check (_identity_refusal) and sets the
spending limits in yuan; its action log shows the staff action log and the holder's own actions
(services/holder_actions.py) together.
"""
import hmac
import re

from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for

from firmware.core import card_layout
from sync_server import db as dbmod, numbers, registry
from sync_server.services import card_jobs, cards, cash_desk, history
from sync_server.services import ServiceError, limits as limit_service, photos, pins as pin_service
from sync_server.web import auth
from sync_server.web.page_text import error_text as _error_text, t

hall_pages = Blueprint("hall_pages", __name__, url_prefix="/hall")
hall_pages.before_request(auth.check_csrf)

MAX_QUERY_CHARS = 64
RECENT_TRANSACTIONS = 10
ACTIONS_ON_PERSON_PAGE = 20       # the newest of the action log; the rest on its own pages
ACTION_LOG_PAGE_SIZE = 50
HOLDER_NAMES = {card_layout.HOLDER_STAFF: ("教工", "staff"), card_layout.HOLDER_STUDENT: ("学生", "student"),
                card_layout.HOLDER_SELF_EMPLOYED: ("自聘", "self-employed"),
                card_layout.HOLDER_TEMPORARY: ("临时", "temporary"),
                card_layout.HOLDER_IDENTITY_ONLY: ("身份卡", "identity only")}


@hall_pages.app_template_filter("holder_category")
def holder_category(code):
    return t(*HOLDER_NAMES.get(code, (str(code), str(code))))


# --- sign in / out -------------------------------------------------------------------------------

@hall_pages.route("/sign-in", methods=("GET", "POST"))
def sign_in():
    """The hall's front door; a user lands by role (a finance-only user on /finance/) or on `next`."""
    return auth.staff_sign_in("hall", "hall/sign_in.html")


@hall_pages.post("/sign-out")
def sign_out():
    auth.end_staff_sessions(dbmod.get_db())    # a copied cookie of this user ends too
    return redirect(url_for("hall_pages.sign_in"))


# --- find a person -------------------------------------------------------------------------------

SEARCH_PAGE_SIZE = 50
MIN_ID_DIGITS = 4                 # fewer trailing ID digits would match half the campus
_ID_TAIL = re.compile(r"[0-9]{%d,17}[0-9X]" % (MIN_ID_DIGITS - 1), re.ASCII)


def _like_escaped(text):
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _search_terms(query):
    """[(condition SQL, parameters, rank)] of a query: a person matches when any condition holds and
    is listed by the best (lowest) rank that holds. Case is ignored the same way on both stores:
    upper() on both sides, in the store's own SQL (SQLite's LIKE alone ignores ASCII case, PostgreSQL's
    does not)."""
    escaped = _like_escaped(query)
    terms = [("upper(p.staff_number) = upper(?)", (query,), 0),
             ("upper(p.staff_number) LIKE upper(?) ESCAPE '\\'", (escaped + "%",), 2),
             ("p.name = ?", (query,), 1),
             ("upper(p.name) LIKE upper(?) ESCAPE '\\'", (escaped + "%",), 3),
             ("upper(p.name) LIKE upper(?) ESCAPE '\\'", ("%" + escaped + "%",), 4)]
    card_number = numbers.parse_id(query)
    if card_number is not None:
        terms.append(("EXISTS (SELECT 1 FROM accounts ca JOIN cards c ON c.account_id = ca.id "
                      "WHERE ca.person_id = p.id AND c.card_number = ?)", (card_number,), 0))
    if _ID_TAIL.fullmatch(query.upper()):       # the last digits of the ID number, or all of them
        terms.append(("upper(p.id_number) = ?", (query.upper(),), 0))
        terms.append(("upper(p.id_number) LIKE ? ESCAPE '\\'", ("%" + query.upper(),), 2))
    return terms


def find_people(conn, query, page=1, page_size=SEARCH_PAGE_SIZE):
    """People whose name contains `query`, whose staff/student number starts with it, who hold the
    card with that number, or whose ID number ends with it (at least MIN_ID_DIGITS characters; a
    whole ID number too). Exact matches first, then prefixes, then the rest; one page of `page_size`
    with the total: {people, total, page, pages}. Each person comes with the current card (number and
    status), department, category, and the ID number masked (mask_id_number)."""
    query = numbers.normalise_digits((query or "").strip())
    if not query:
        return {"people": [], "total": 0, "page": 1, "pages": 1}
    terms = _search_terms(query)
    where = " OR ".join("(%s)" % sql for sql, _, _ in terms)
    where_parameters = [value for _, parameters, _ in terms for value in parameters]
    total = conn.execute("SELECT count(*) FROM persons p WHERE " + where, where_parameters).fetchone()[0]
    pages = max(1, -(-total // page_size))
    page = min(max(1, page), pages)
    rank = "CASE %s ELSE 9 END" % " ".join("WHEN %s THEN %d" % (sql, rank) for sql, _, rank in terms)
    rows = conn.execute(
        "SELECT p.id, p.name, p.staff_number, p.id_number, p.category, p.department, a.blocked, c.card_number, "
        "c.status FROM persons p "
        "LEFT JOIN accounts a ON a.id = (SELECT min(id) FROM accounts WHERE person_id = p.id) "
        "LEFT JOIN cards c ON c.account_id = a.id AND c.generation = "
        "(SELECT max(generation) FROM cards WHERE account_id = a.id) "
        "WHERE " + where + " ORDER BY " + rank + ", coalesce(p.staff_number, ''), p.id LIMIT ? OFFSET ?",
        where_parameters + where_parameters + [page_size, (page - 1) * page_size]).fetchall()
    keys = ("id", "name", "staff_number", "id_number", "category", "department", "blocked", "card_number",
            "card_status")
    people = [dict(zip(keys, row)) for row in rows]
    for person in people:
        person["id_number"] = mask_id_number(person["id_number"])
    return {"people": people, "total": total, "page": page, "pages": pages}


def mask_id_number(id_number):
    """The ID number with all but its first three and its last character hidden. The last four are
    what the clerk reads off the card for a PIN reset (reset_pin), so no page shows them."""
    if not id_number:
        return ""
    if len(id_number) <= 6:
        return "*" * len(id_number)
    return id_number[:3] + "*" * (len(id_number) - 4) + id_number[-1]


@hall_pages.get("/")
@auth.staff_required("hall")
def search():
    query = request.args.get("q", "")
    empty = {"people": [], "total": 0, "page": 1, "pages": 1}
    if len(query) > MAX_QUERY_CHARS:
        flash(t("查询内容过长（最多 %d 个字符）" % MAX_QUERY_CHARS, "Search text too long (at most %d characters)"
                % MAX_QUERY_CHARS), "error")
        return render_template("hall/search.html", query="", found=empty), 400
    page = numbers.parse_page(request.args.get("page"))
    if page is None:
        flash(t("页码无效（应为 1 至 %d）" % numbers.MAX_PAGE, "Invalid page number (1 to %d)" % numbers.MAX_PAGE),
              "error")
        return render_template("hall/search.html", query=query, found=empty), 400
    found = find_people(dbmod.get_db(), query, page)
    return render_template("hall/search.html", query=query, found=found, page_size=SEARCH_PAGE_SIZE)


# --- a person ------------------------------------------------------------------------------------

def _person(conn, person_id):
    person = dbmod.fetch_named(conn, "SELECT p.id, p.name, p.staff_number, p.id_number, p.category, p.department, "
                               "a.id AS account_id, a.blocked, a.in_debt FROM persons p JOIN accounts a "
                               "ON a.person_id = p.id WHERE p.id = ? ORDER BY a.id LIMIT 1", (person_id,))
    if person is None:
        abort(404)
    return person


@hall_pages.get("/person/<id:person_id>")
@auth.staff_required("hall")
def person(person_id):
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    cards = conn.execute("SELECT card_number, generation, status, expiry_yyyymmdd, issued_ms FROM cards "
                         "WHERE account_id = ? ORDER BY generation DESC", (holder["account_id"],)).fetchall()
    cards = [dict(zip(("card_number", "generation", "status", "expiry_yyyymmdd", "issued_ms"), row)) for row in cards]
    balances = registry.balances_of(conn, holder["account_id"])
    recent = history.recent(conn, holder["account_id"], page_size=RECENT_TRANSACTIONS)["rows"]
    return render_template("hall/person.html", holder=holder, cards=cards, balances=balances,
                           total_fen=sum(balances.values()), recent=recent,
                           actions=auth.actions_for_person(conn, person_id, ACTIONS_ON_PERSON_PAGE),
                           actions_total=auth.count_actions_for_person(conn, person_id),
                           id_number_masked=mask_id_number(holder["id_number"]),
                           limits=limit_service.get_limits(conn, holder["account_id"]),
                           photos=photos.photo_summary(conn, person_id), photo_kinds=PHOTO_KINDS,
                           cash_orders=cash_desk.cash_recharges(conn, holder["account_id"]))


def _act(person_id, action, operation, own_transaction=False, **log_fields):
    """Run `operation(conn, holder)` and log it; on success go to the receipt.

    The change and its log line commit together, except for operations that own their transaction
    (loss and unfreeze go through the PIN-checking helper of the services): those are logged right
    after their own commit.
    """
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    try:
        if own_transaction:
            detail = operation(conn, holder) or {}
        with dbmod.transaction(conn):
            if not own_transaction:
                detail = operation(conn, holder) or {}
            # a repeated submission names the receipt of the first one and is not logged again
            action_id = detail.pop("receipt_of", None) or auth.log_action(
                conn, g.staff, action, person_id=person_id, account_id=holder["account_id"], detail=detail,
                card_number=detail.get("card_number"), **log_fields)
    except registry.HallError as error:
        flash(_error_text(error), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))
    return redirect(url_for("hall_pages.receipt", action_id=action_id))


@hall_pages.post("/person/<id:person_id>/report-loss")
@auth.staff_required("hall")
def report_loss(person_id):
    def operation(conn, holder):
        return cards.report_loss(conn, holder["account_id"], operator=g.staff["username"])
    return _act(person_id, "report_loss", operation, own_transaction=True)


@hall_pages.post("/person/<id:person_id>/unfreeze")
@auth.staff_required("hall")
def unfreeze(person_id):
    def operation(conn, holder):
        return cards.unfreeze(conn, holder["account_id"], operator=g.staff["username"])
    return _act(person_id, "unfreeze", operation, own_transaction=True)


# --- issue and reissue through the issuing station (发卡/补卡任务, services/card_jobs.py) -----------------

def _job_or_404(conn, job_id):
    try:
        return card_jobs.get(conn, job_id)
    except ServiceError:
        abort(404)


def _job_page(job):
    return redirect(url_for("hall_pages.card_job", job_id=job["id"]))


@hall_pages.get("/person/<id:person_id>/reissue")
@auth.staff_required("hall")
def reissue_confirm(person_id):
    """发卡/补办's identity check: the holder's photos (or 未采集), the fee and the station, before any job
    exists. An account with an unfinished job goes to that job instead."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    job = card_jobs.open_job(conn, holder["account_id"])
    if job is not None:
        flash(t("该账户已有未完成的发卡/补卡任务", "The account already has an unfinished card job"), "error")
        return _job_page(job)
    fee_source = request.args.get("fee_source", "balance")
    station = request.args.get("station", "").strip()
    if fee_source not in cards.FEE_SOURCES or len(station) > card_jobs.MAX_STATION_CHARS:
        flash(t("补卡费应从余额扣除或现金支付；发卡机名称最多 %d 个字符" % card_jobs.MAX_STATION_CHARS,
                "The fee is paid from the balance or in cash; a station name has at most %d characters"
                % card_jobs.MAX_STATION_CHARS), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))
    has_card = conn.execute("SELECT 1 FROM cards WHERE account_id = ?", (holder["account_id"],)).fetchone() is not None
    return render_template("hall/reissue_confirm.html", holder=holder, fee_source=fee_source, station=station,
                           has_card=has_card, fee_fen=dbmod.setting(conn, "reissue_fee_fen") if has_card else 0,
                           photos=photos.photo_summary(conn, person_id), photo_kinds=PHOTO_KINDS)


@hall_pages.post("/person/<id:person_id>/reissue")
@auth.staff_required("hall")
def reissue(person_id):
    """After the identity check: the card job, logged; the issuing station writes the card and the job's
    page follows it. The same form again lands on the job it made."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    try:
        with dbmod.transaction(conn):
            job = card_jobs.create(conn, holder["account_id"], request.form.get("fee_source", "balance"),
                                   g.staff["username"], g.staff["id"], request.form.get("station", "").strip() or None)
            auth.log_action(conn, g.staff, "card_job", person_id=person_id, account_id=holder["account_id"],
                            detail={"job_id": job["id"], "kind": job["kind"], "fee_source": job["fee_source"],
                                    "station": job["station"]})
    except ServiceError as error:
        job = card_jobs.open_job(conn, holder["account_id"]) if error.code == "job_open" else None
        if job is not None:
            return _job_page(job)
        flash(_error_text(error), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))
    return _job_page(job)


@hall_pages.get("/card-job/<id:job_id>")
@auth.staff_required("hall")
def card_job(job_id):
    """The job's state, followed while a station works on it; once done, its receipt."""
    conn = dbmod.get_db()
    job = _job_or_404(conn, job_id)
    return render_template("hall/card_job.html", job=job, holder=_person(conn, job["person_id"]),
                           fee_due_fen=card_jobs.fee_due_fen(conn, job), stuck=card_jobs.is_stuck(job))


@hall_pages.get("/card-job/<id:job_id>/status")
@auth.staff_required("hall")
def card_job_status(job_id):
    """The job page polls this while the job is pending or being written."""
    job = _job_or_404(dbmod.get_db(), job_id)
    return {"status": job["status"], "updated_ms": job["updated_ms"]}


def _job_action(job_id, action, change):
    """Run `change(conn, job)` and its log line in one transaction; back to the job's page."""
    conn = dbmod.get_db()
    job = _job_or_404(conn, job_id)
    try:
        with dbmod.transaction(conn):
            changed = change(conn, job)
            auth.log_action(conn, g.staff, action, person_id=job["person_id"], account_id=job["account_id"],
                            detail={"job_id": job_id, "kind": job["kind"], "fee_source": changed["fee_source"]})
    except ServiceError as error:
        flash(_error_text(error), "error")
    return _job_page(job)


@hall_pages.post("/card-job/<id:job_id>/cancel")
@auth.staff_required("hall")
def cancel_card_job(job_id):
    return _job_action(job_id, "card_job_cancel", lambda conn, job: card_jobs.cancel(conn, job_id, g.staff["username"]))


@hall_pages.post("/card-job/<id:job_id>/abandon")
@auth.staff_required("hall")
def abandon_card_job(job_id):
    return _job_action(job_id, "card_job_abandon",
                       lambda conn, job: card_jobs.abandon(conn, job_id, g.staff["username"]))


@hall_pages.post("/card-job/<id:job_id>/retry")
@auth.staff_required("hall")
def retry_card_job(job_id):
    fee_source = request.form.get("fee_source") or None
    return _job_action(job_id, "card_job_retry", lambda conn, job: card_jobs.retry(conn, job_id, fee_source))


@hall_pages.app_template_global()
def open_card_job(account_id):
    return card_jobs.open_job(dbmod.get_db(), account_id)


@hall_pages.app_template_global()
def card_stations():
    return card_jobs.stations_seen(dbmod.get_db())


@hall_pages.app_template_filter("card_job_status")
def card_job_status_name(status):
    return t(*card_jobs.STATUS_NAMES[status])


@hall_pages.app_template_filter("card_job_kind")
def card_job_kind_name(kind):
    return t(*card_jobs.KIND_NAMES[kind])


# --- PIN reset and limits ------------------------------------------------------------------------

ID_CHECK_CHARS = 4
_ID_CHECK = re.compile(r"[0-9A-Z]{%d}" % ID_CHECK_CHARS, re.ASCII)


def _identity_refusal(holder, form):
    """Why the identity check of a PIN reset fails, or None. The clerk ticks 已核对证件 and types the
    last four characters of the ID number from the card in front of them; the server compares them
    with the record. The tick alone is one click; the typed characters make the clerk hold the card
    and prove it is this person's (the pages never show them: mask_id_number). A record without an ID
    number cannot be checked this way, so it is refused rather than waved through."""
    if form.get("id_checked") != "yes":
        return t("请先核对持卡人的有效证件，并勾选“已核对证件”", "Check the holder's ID card first and tick 'ID checked'")
    on_record = (holder["id_number"] or "").strip().upper()
    if len(on_record) < ID_CHECK_CHARS:
        return t("档案中没有证件号码，无法核对身份：请先补录证件号码", "No ID number on record to check against: "
                 "add it to the person's record first")
    typed = numbers.normalise_digits(form.get("id_last4", "")[:MAX_QUERY_CHARS]).strip().upper()
    if not _ID_CHECK.fullmatch(typed):
        return t("请输入证件号码后%d位（数字，末位可为X）" % ID_CHECK_CHARS,
                 "Type the last %d characters of the ID number (digits, the last may be X)" % ID_CHECK_CHARS)
    if not hmac.compare_digest(typed.encode(), on_record[-ID_CHECK_CHARS:].encode()):
        return t("证件号码后%d位与档案不符，密码未重置" % ID_CHECK_CHARS,
                 "The last %d characters of the ID number do not match the record: PIN not reset" % ID_CHECK_CHARS)
    return None


@hall_pages.post("/person/<id:person_id>/reset-pin")
@auth.staff_required("hall")
def reset_pin(person_id):
    """重置密码: back to the initial PIN, after the identity check; logged with its receipt. Clears a
    lockout and ends the holder's portal sessions (pin_rules.store_pin)."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    back = url_for("hall_pages.person", person_id=person_id) + "#pin"
    refusal = _identity_refusal(holder, request.form)
    if refusal is not None:
        flash(refusal, "error")
        return redirect(back)
    logged = []

    def log(conn):
        logged.append(auth.log_action(conn, g.staff, "pin_reset", person_id=person_id, account_id=holder["account_id"],
                                      detail={"to_initial": True, "identity_check": "id_last4"}))
    try:
        pin_service.reset_pin(conn, holder["account_id"], g.staff["username"], also=log)
    except registry.HallError as error:
        flash(_error_text(error), "error")
        return redirect(back)
    return redirect(url_for("hall_pages.receipt", action_id=logged[0]))


@hall_pages.post("/person/<id:person_id>/limits")
@auth.staff_required("hall")
def set_limits(person_id):
    """消费限额 in yuan; the old and new values go into the log line and onto the receipt."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    back = url_for("hall_pages.person", person_id=person_id) + "#limits"
    single_fen = numbers.parse_yuan(request.form.get("single_yuan"))
    daily_fen = numbers.parse_yuan(request.form.get("daily_yuan"))
    if not single_fen or not daily_fen:
        flash(t("请输入单笔和每日限额（元，最多两位小数，如 50 或 12.50）",
                "Enter both limits in yuan (at most two decimals, like 50 or 12.50)"), "error")
        return redirect(back)
    logged = []

    def log(conn, before, after):
        logged.append(auth.log_action(conn, g.staff, "limits", person_id=person_id, account_id=holder["account_id"],
                                      detail=dict(after, before=before)))
    try:
        limit_service.set_limits(conn, holder["account_id"], single_fen, daily_fen, operator=g.staff["username"],
                                 also=log)
    except registry.HallError as error:
        flash(_error_text(error), "error")
        return redirect(back)
    return redirect(url_for("hall_pages.receipt", action_id=logged[0]))


# --- the action log ------------------------------------------------------------------------------

VIA_NAMES = {"portal": ("本人（网上服务大厅）", "the holder (web portal)"), "app": ("本人（手机）", "the holder (phone app)"),
             "holder": ("本人", "the holder")}


@hall_pages.app_template_filter("action_by")
def action_by(entry):
    """Who did it: the clerk's name (and username), or the holder and where."""
    if entry["source"] == "holder":
        return t(*VIA_NAMES.get(entry["via"], VIA_NAMES["holder"]))
    if entry.get("display_name") and entry["display_name"] != entry["username"]:
        return "%s（%s）" % (entry["display_name"], entry["username"])
    return entry["username"]


@hall_pages.get("/person/<id:person_id>/actions")
@auth.staff_required("hall")
def person_actions(person_id):
    """The whole action log of a person, staff and holder together, newest first, a page at a time."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    total = auth.count_actions_for_person(conn, person_id)
    pages = max(1, -(-total // ACTION_LOG_PAGE_SIZE))
    page = numbers.parse_page(request.args.get("page"))
    if page is None:
        abort(400)
    page = min(page, pages)
    actions = auth.actions_for_person(conn, person_id, ACTION_LOG_PAGE_SIZE, (page - 1) * ACTION_LOG_PAGE_SIZE)
    return render_template("hall/person_actions.html", holder=holder, actions=actions, total=total, page=page,
                           pages=pages)


# --- photos: 人脸采集 / 证件照采集 --------------------------------------------------------------------

PHOTO_KINDS = [(kind,) + photos.KIND_NAMES[kind] for kind in photos.KINDS]   # (kind, zh, en)
PHOTO_FORM_ALLOWANCE = 64 * 1024     # the multipart wrapping around the photo


@hall_pages.url_value_preprocessor
def _photo_upload_limit(endpoint, _values):
    """A photo form may carry a photo as large as the app's (photos.MAX_PHOTO_BYTES) plus its form;
    set before check_csrf parses the form (URL value preprocessors run before before_request)."""
    if endpoint == "hall_pages.upload_photo":
        request.max_content_length = photos.MAX_PHOTO_BYTES + PHOTO_FORM_ALLOWANCE


@hall_pages.get("/person/<id:person_id>/photo/<kind>")
@auth.staff_required("hall")
def person_photo(person_id, kind):
    try:
        image = photos.photo_image(dbmod.get_db(), person_id, kind)
    except ServiceError:
        abort(404)
    response = Response(image, 200, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@hall_pages.post("/person/<id:person_id>/photo/<kind>")
@auth.staff_required("hall")
def upload_photo(person_id, kind):
    """A photo taken at the desk (or brought on a file): the same checks as the app's; logged."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    if kind not in photos.KINDS:
        abort(404)
    upload = request.files.get("photo")
    data = upload.read(photos.MAX_PHOTO_BYTES + 1) if upload is not None else b""
    zh, en = photos.KIND_NAMES[kind]
    back = url_for("hall_pages.person", person_id=person_id) + "#photos"

    def log(conn, stored):
        auth.log_action(conn, g.staff, "photo", person_id=person_id, account_id=holder["account_id"],
                        detail={"kind": kind, "width": stored["width"], "height": stored["height"],
                                "sha256": stored["sha256"]}, now_ms=stored["checked_ms"])
    try:
        photos.store_photo(conn, person_id, kind, data, "hall", operator=g.staff["username"], also=log)
    except registry.HallError as error:
        flash(t("%s未通过检查：" % zh, "%s refused: " % en.capitalize()) + _error_text(error), "error")
        return redirect(back)
    flash(t("%s已采集" % zh, "%s taken" % en.capitalize()), "ok")
    return redirect(back)


# --- cash desk: recharge with confirmation, approval above the cap, reversal (冲正), shift close (结账) ---

RECHARGE_WALLETS = ("main", "water")
REQUEST_ID_CHARS = 64


def _recharge_form():
    """(amount_fen, wallet) of a recharge form, or None after flashing what is wrong. Amounts far above
    the desk's maximum still parse, so the clerk reads that they are too big rather than malformed."""
    amount_fen = numbers.parse_yuan(request.form.get("amount_yuan"), maximum_fen=10 ** 9)
    wallet = request.form.get("wallet", "main")
    if not amount_fen or wallet not in RECHARGE_WALLETS:
        flash(t("请输入充值金额（元，最多两位小数）", "Enter the amount in yuan (at most two decimals)"), "error")
        return None
    return amount_fen, wallet


def _confirm_page(conn, holder, amount_fen, wallet, status=200):
    """The confirmation page: who, which wallet, how much, and above the cap where the approver signs."""
    card = conn.execute("SELECT card_number FROM cards WHERE account_id = ? ORDER BY generation DESC LIMIT 1",
                        (holder["account_id"],)).fetchone()
    return render_template("hall/recharge_confirm.html", holder=holder, card_number=card[0] if card else None,
                           amount_fen=amount_fen, wallet=wallet, wallet_name=cash_desk.wallet_name(wallet, g.lang),
                           needs_approval=cash_desk.check_amount_allowed(conn, amount_fen),
                           limits=cash_desk.limits(conn), signed_form_key=request.form.get(auth.FORM_KEY_FIELD, "")
                           ), status


@hall_pages.post("/person/<id:person_id>/recharge")
@auth.staff_required("hall")
def recharge(person_id):
    """The recharge form lands here: a confirmation page, nothing booked yet."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    form = _recharge_form()
    if form is None:
        return redirect(url_for("hall_pages.person", person_id=person_id))
    if auth.submitted_form_key() is None:
        flash(t("页面已过期，请刷新后重新提交", "The page expired: reload it and submit again"), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))
    try:
        return _confirm_page(conn, holder, *form)
    except registry.HallError as error:
        flash(_error_text(error), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))


@hall_pages.post("/person/<id:person_id>/recharge/confirm")
@auth.staff_required("hall")
def recharge_confirm(person_id):
    """确认充值 books (once per form key); above the cap with the approver's name and password it books
    at once, 提交审批 leaves it pending for the approvals list."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    form = _recharge_form()
    form_key = auth.submitted_form_key()
    if form is None or form_key is None:
        if form_key is None:
            flash(t("页面已过期，请刷新后重新提交", "The page expired: reload it and submit again"), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))
    hold = request.form.get("step") == "hold"
    try:
        approver = None if hold else _approver(conn)
        done = cash_desk.recharge(conn, holder["account_id"], form[0], g.staff, form[1], idempotency_key=form_key,
                                  approver=approver, hold=hold)
    except (registry.HallError, auth.AuthError) as error:
        flash(_error_text(error) if isinstance(error, registry.HallError) else
              t("审批人：", "Approver: ") + error.text(g.lang), "error")
        try:
            return _confirm_page(conn, holder, *form, status=getattr(error, "status", 403))
        except registry.HallError:
            return redirect(url_for("hall_pages.person", person_id=person_id))
    if done["outcome"] == cash_desk.PENDING:
        flash(t("已提交，等待另一位工作人员审批后入账", "Submitted: booked once a second staff member approves it"), "ok")
        return redirect(url_for("hall_pages.approvals"))
    if done["receipt_id"] is None:
        return redirect(url_for("hall_pages.person", person_id=person_id))
    return redirect(url_for("hall_pages.receipt", action_id=done["receipt_id"]))


def _approver(conn):
    """The second person named on the confirmation page, after their password (None when not named)."""
    username = request.form.get("approver", "").strip()
    if not username:
        return None
    staff_id = auth.check_staff_password(conn, username, request.form.get("approver_password", ""), dbmod.now_ms())
    return auth.staff_user(conn, staff_id)


@hall_pages.get("/approvals")
@auth.staff_required("hall")
def approvals():
    conn = dbmod.get_db()
    return render_template("hall/recharge_approvals.html", requests=cash_desk.pending_requests(conn),
                           limits=cash_desk.limits(conn))


def _request_id_or_404(request_id):
    if len(request_id) > REQUEST_ID_CHARS or not request_id.isalnum():
        abort(404)
    return request_id


@hall_pages.post("/approvals/<request_id>/approve")
@auth.staff_required("hall")
def approve_request(request_id):
    """Approval from the list: the signed-in staff member confirms with their own password."""
    conn = dbmod.get_db()
    request_id = _request_id_or_404(request_id)
    try:
        auth.check_staff_password(conn, g.staff["username"], request.form.get("password", ""), dbmod.now_ms())
        done = cash_desk.approve(conn, request_id, g.staff)
    except (registry.HallError, auth.AuthError) as error:
        flash(_error_text(error) if isinstance(error, registry.HallError) else error.text(g.lang), "error")
        return redirect(url_for("hall_pages.approvals"))
    return redirect(url_for("hall_pages.receipt", action_id=done["receipt_id"]))


@hall_pages.post("/approvals/<request_id>/refuse")
@auth.staff_required("hall")
def refuse_request(request_id):
    try:
        cash_desk.refuse(dbmod.get_db(), _request_id_or_404(request_id), g.staff)
        flash(t("已拒绝，未入账", "Refused: nothing was booked"), "ok")
    except registry.HallError as error:
        flash(_error_text(error), "error")
    return redirect(url_for("hall_pages.approvals"))


def _supervisor_only():
    if cash_desk.SUPERVISOR_ROLE not in g.staff["roles"]:
        g.needed_role = cash_desk.SUPERVISOR_ROLE      # the 403 page names the role the clerk lacks
        abort(403)


@hall_pages.route("/person/<id:person_id>/reverse/<order_id>", methods=("GET", "POST"))
@auth.staff_required("hall")
def reverse_recharge(person_id, order_id):
    """冲正 of a cash recharge by a supervisor: the original shown, a reason typed, a new transfer booked."""
    _supervisor_only()
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    try:
        order = cash_desk.get_cash_recharge(conn, order_id)
    except registry.HallError:
        abort(404)
    if order["account_id"] != holder["account_id"]:
        abort(404)
    if request.method == "POST":
        try:
            done = cash_desk.reverse(conn, order_id, g.staff, request.form.get("reason", ""))
        except registry.HallError as error:
            flash(_error_text(error), "error")
        else:
            return redirect(url_for("hall_pages.receipt", action_id=done["staff_action_id"]))
    return render_template("hall/recharge_reverse.html", holder=holder, order=order,
                           wallet_name=cash_desk.wallet_name(order["wallet"], g.lang))


def _signed_fen(text):
    """The shift total the page showed (negative when more was paid back than taken), else None."""
    text = (text or "").strip()
    value = numbers.parse_int(text.lstrip("-"), 0, numbers.MAX_AMOUNT_FEN)
    return None if value is None else (-value if text.startswith("-") else value)


@hall_pages.route("/cash-close", methods=("GET", "POST"))
@auth.staff_required("hall")
def cash_close():
    """结账: the signed-in clerk's cash since their last close; the counted cash closes the shift."""
    conn = dbmod.get_db()
    if request.method == "POST":
        counted_fen = numbers.parse_yuan(request.form.get("counted_yuan"))
        form_key = auth.submitted_form_key()
        expected_fen = _signed_fen(request.form.get("expected_fen"))
        if counted_fen is None or form_key is None:
            flash(t("请输入清点的现金（元，最多两位小数）", "Enter the cash counted in yuan (at most two decimals)")
                  if form_key is not None else t("页面已过期，请刷新后重新提交", "The page expired: reload it and submit again"),
                  "error")
        else:
            try:
                close = cash_desk.close_shift(conn, g.staff, counted_fen, request.form.get("note"), form_key,
                                              expected_fen)
            except registry.HallError as error:
                flash(_error_text(error), "error")
            else:
                return redirect(url_for("hall_pages.cash_close_print", close_id=close["id"]))
    return render_template("hall/cash_close.html", shift=cash_desk.open_shift(conn, g.staff["username"]),
                           closes=cash_desk.closes_of_clerk(conn, g.staff["username"]))


@hall_pages.get("/cash-close/<id:close_id>")
@auth.staff_required("hall")
def cash_close_print(close_id):
    try:
        close = cash_desk.get_close(dbmod.get_db(), close_id)
    except registry.HallError:
        abort(404)
    return render_template("hall/cash_close_print.html", close=close)


@hall_pages.app_template_filter("wallet_name")
def wallet_name(wallet):
    return cash_desk.wallet_name(wallet, g.lang)


@hall_pages.app_template_filter("cash_kind")
def cash_kind(kind):
    return t(*cash_desk.KIND_NAMES.get(kind, (kind, kind)))


@hall_pages.app_template_global()
def cash_reversal_of(order_id):
    """The reversal of a cash order (the receipt of the original shows it), or None."""
    return cash_desk.get_reversal(dbmod.get_db(), order_id)


@hall_pages.app_template_filter("cash_difference")
def cash_difference(difference_fen):
    return cash_desk.difference_text(difference_fen, g.lang)


# --- receipt -------------------------------------------------------------------------------------

ACTION_NAMES = {"recharge": ("现金充值", "cash recharge"), "reissue": ("补办卡片", "card reissue"),
                "unfreeze": ("解挂", "unfreeze"), "report_loss": ("挂失", "report loss"),
                "photo": ("照片采集", "photo taken"),
                "pin_reset": ("重置交易密码", "PIN reset"), "pin_change": ("修改交易密码", "PIN changed"),
                "limits": ("设置消费限额", "limits set"), "phone_bound": ("绑定手机", "phone bound"),
                "phone_unbound": ("解除手机绑定", "phone removed"), "wallet_move": ("钱包转账", "wallet transfer"),
                "paycode_on": ("开通付款码", "payment code on"), "paycode_stop": ("停用付款码", "payment code stopped"),
                "electricity": ("缴纳电费", "electricity paid")}
ACTION_NAMES.update(cash_desk.ACTION_NAMES)
ACTION_NAMES.update(card_jobs.ACTION_NAMES)


@hall_pages.app_template_filter("action_name")
def action_name(action):
    return t(*ACTION_NAMES.get(action, (action, action)))


@hall_pages.get("/receipt/<id:action_id>")
@auth.staff_required("hall")
def receipt(action_id):
    conn = dbmod.get_db()
    done = auth.action(conn, action_id)
    if done is None:
        abort(404)
    holder = _person(conn, done["person_id"])
    return render_template("hall/receipt.html", done=done, holder=holder,
                           action_name=action_name(done["action"]))
