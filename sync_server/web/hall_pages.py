"""Service-hall pages (`/hall/...`) for staff with the `hall` role: find a person, see their cards and
balances, cash recharge, report loss, unfreeze, reissue, and print a receipt.

Each action runs in one transaction together with its line in the staff action log (who, what, to
whom, when), so there is never a change without its log line or a log line without its change. The
log line's id is the receipt number. The cash recharge form carries a one-time key (auth.form_key):
the same form submitted twice books once and both submissions land on the first receipt.

Photos (人脸采集 / 证件照采集, sync_server/services/photos.py): the person page shows the person's face
photo and ID photo (未采集 where none), served only to the hall role by /hall/person/<id>/photo/<kind>
(no-store), and takes a new one (the same server checks as the phone app's, source "hall", logged).
补办 goes through a confirmation page that shows the photos beside the new card's UID, so the clerk
checks who is at the desk before the new card is written.
"""
import json

from flask import Blueprint, Response, abort, flash, g, redirect, render_template, request, url_for

from firmware.core import card_layout
from sync_server import db as dbmod, numbers, registry
from sync_server.services import cards, history, recharge as recharge_service
from sync_server.services import ServiceError, photos
from sync_server.web import auth
from sync_server.web.page_text import error_text as _error_text, t

hall_pages = Blueprint("hall_pages", __name__, url_prefix="/hall")
hall_pages.before_request(auth.check_csrf)

MAX_SEARCH_RESULTS = 50
MAX_QUERY_CHARS = 64
RECENT_TRANSACTIONS = 10
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
    if request.method == "POST":
        conn = dbmod.get_db()
        username = request.form.get("username", "").strip()
        try:
            staff_id = auth.check_staff_password(conn, username, request.form.get("password", ""), dbmod.now_ms())
        except auth.AuthError as error:
            flash(error.text(g.lang), "error")
            return render_template("hall/sign_in.html", username=username), 401
        auth.start_staff_session(conn, staff_id)
        return redirect(url_for("hall_pages.search"))
    return render_template("hall/sign_in.html", username="")


@hall_pages.post("/sign-out")
def sign_out():
    auth.end_staff_sessions(dbmod.get_db())    # a copied cookie of this user ends too
    return redirect(url_for("hall_pages.sign_in"))


# --- find a person -------------------------------------------------------------------------------

def find_people(conn, query):
    """People whose name contains `query`, whose staff/student number starts with it, or who hold the
    card with that number. Bounded to MAX_SEARCH_RESULTS."""
    query = numbers.normalise_digits((query or "").strip())
    if not query:
        return []
    like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    card_number = numbers.parse_id(query)
    rows = conn.execute(
        "SELECT DISTINCT p.id, p.name, p.staff_number, p.category FROM persons p "
        "LEFT JOIN accounts a ON a.person_id = p.id LEFT JOIN cards c ON c.account_id = a.id "
        "WHERE p.name LIKE ? ESCAPE '\\' OR p.staff_number LIKE ? ESCAPE '\\' OR c.card_number = ? "
        "ORDER BY p.id LIMIT ?", (like, like[1:], card_number if card_number is not None else -1,
                                   MAX_SEARCH_RESULTS)).fetchall()
    return [{"id": r[0], "name": r[1], "staff_number": r[2], "category": r[3]} for r in rows]


@hall_pages.get("/")
@auth.staff_required("hall")
def search():
    query = request.args.get("q", "")
    if len(query) > MAX_QUERY_CHARS:
        flash(t("查询内容过长（最多 %d 个字符）" % MAX_QUERY_CHARS, "Search text too long (at most %d characters)"
                % MAX_QUERY_CHARS), "error")
        return render_template("hall/search.html", query="", people=[]), 400
    return render_template("hall/search.html", query=query, people=find_people(dbmod.get_db(), query))


# --- a person ------------------------------------------------------------------------------------

def _person(conn, person_id):
    person = dbmod.fetch_named(conn, "SELECT p.id, p.name, p.staff_number, p.id_number, p.category, a.id AS account_id, "
                               "a.blocked, a.in_debt FROM persons p JOIN accounts a ON a.person_id = p.id "
                               "WHERE p.id = ? ORDER BY a.id LIMIT 1", (person_id,))
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
                           actions=auth.actions_for_person(conn, person_id, 20),
                           photos=photos.photo_summary(conn, person_id), photo_kinds=PHOTO_KINDS)


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


@hall_pages.post("/person/<id:person_id>/recharge")
@auth.staff_required("hall")
def recharge(person_id):
    amount_fen = numbers.parse_yuan(request.form.get("amount_yuan"))
    if not amount_fen:
        flash(t("请输入充值金额（元，最多两位小数）", "Enter the amount in yuan (at most two decimals)"), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))

    form_key = auth.submitted_form_key()
    if form_key is None:
        flash(t("页面已过期，请刷新后重新提交", "The page expired: reload it and submit again"), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))

    def operation(conn, holder):
        order = recharge_service.cash_recharge(conn, holder["account_id"], amount_fen, g.staff["username"],
                                               idempotency_key=form_key)
        if order["repeated"]:       # the same form again (a double click): the first receipt
            first = _receipt_of_order(conn, person_id, order["order_id"])
            if first is not None:
                return {"receipt_of": first}
        return {"order_id": order["order_id"], "wallet": order["wallet"],
                "balance_fen_after": registry.balances_of(conn, holder["account_id"])[order["wallet"]]}
    return _act(person_id, "recharge", operation, amount_fen=amount_fen)


def _receipt_of_order(conn, person_id, order_id):
    """The first staff action that recorded `order_id` (a person has a few recharges: read in Python,
    the same on both stores, rather than each store's JSON operators)."""
    for action_id, detail in conn.execute("SELECT id, detail FROM staff_actions WHERE person_id = ? "
                                          "AND action = 'recharge' ORDER BY id", (person_id,)):
        if json.loads(detail or "{}").get("order_id") == order_id:
            return action_id
    return None


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


@hall_pages.post("/person/<id:person_id>/reissue")
@auth.staff_required("hall")
def reissue(person_id):
    try:
        uid = bytes.fromhex(request.form.get("uid", "").strip())
    except ValueError:
        uid = b""
    fee_source = request.form.get("fee_source", "balance")

    def operation(conn, holder):
        if not conn.execute("SELECT 1 FROM cards WHERE account_id = ?", (holder["account_id"],)).fetchone():
            identity = cards.issue_card(conn, holder["account_id"], uid, g.staff["username"])["identity"]
            fee = {}
        else:
            done = cards.reissue(conn, holder["account_id"], uid, g.staff["username"], fee_source)
            identity = done["identity"]
            fee = {"fee_fen": done["fee_fen"], "fee_source": done["fee_source"]}
        return dict(fee, card_number=identity.card_number, generation=identity.generation,
                    expiry_yyyymmdd=identity.expiry_yyyymmdd, uid=uid.hex())
    return _act(person_id, "reissue", operation)


@hall_pages.get("/person/<id:person_id>/reissue")
@auth.staff_required("hall")
def reissue_confirm(person_id):
    """补办's confirmation: the holder's photos (or 未采集) beside the new UID, before anything happens."""
    conn = dbmod.get_db()
    holder = _person(conn, person_id)
    uid = request.args.get("uid", "").strip()
    fee_source = request.args.get("fee_source", "balance")
    try:
        valid = len(bytes.fromhex(uid)) in (4, 7)
    except ValueError:
        valid = False
    if not valid or fee_source not in cards.FEE_SOURCES:
        flash(t("卡片UID应为4或7字节的十六进制", "The card UID is 4 or 7 bytes in hex"), "error")
        return redirect(url_for("hall_pages.person", person_id=person_id))
    has_card = conn.execute("SELECT 1 FROM cards WHERE account_id = ?", (holder["account_id"],)).fetchone() is not None
    return render_template("hall/reissue_confirm.html", holder=holder, uid=uid.lower(), fee_source=fee_source,
                           has_card=has_card, fee_fen=dbmod.setting(conn, "reissue_fee_fen") if has_card else 0,
                           photos=photos.photo_summary(conn, person_id), photo_kinds=PHOTO_KINDS)


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


# --- receipt -------------------------------------------------------------------------------------

ACTION_NAMES = {"recharge": ("现金充值", "cash recharge"), "reissue": ("补办卡片", "card reissue"),
                "unfreeze": ("解挂", "unfreeze"), "report_loss": ("挂失", "report loss"),
                "photo": ("照片采集", "photo taken")}


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
