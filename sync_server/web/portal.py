"""Cardholder portal (`/portal/...`), laid out like the old WEB查询平台 of the manual: name, number,
balance and validity on top, 快速通道 links, 流水查询 with 起始日期/截止日期/查询类型 and paging.

Every page works on the account in the session (set at sign-in from staff/student number + card PIN);
no page takes an account, person or card id from the URL or the form. Ids that do come from a form
(a recharge order) are looked up together with the session's account, so another person's id finds
nothing.
"""
from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for

import datetime

from sync_server import db as dbmod, numbers, pin_rules, registry, services
from sync_server.services import binding, cards, history, holder_actions
from sync_server.services import electricity as electricity_service, limits as limit_service
from sync_server.services import pins as pin_service, recharge as recharge_service
from sync_server.web import auth
from sync_server.web.page_text import error_text as _error_text, t, yuan as forms_yuan

portal = Blueprint("portal", __name__, url_prefix="/portal")
portal.before_request(auth.check_csrf)

PAGE_ROWS = 10                  # rows per page, as on the manual's page
VIA = holder_actions.VIA_PORTAL  # where the holder's own actions were taken, in the hall's action log
DEFAULT_RANGE_DAYS = 30         # the statement opens on the last month
QUERY_TYPES = (history.KIND_CONSUMPTION, history.KIND_RECHARGE, history.KIND_WATER, history.KIND_ALL)


def _holder(conn, account_id):
    """Name, number, balances and the current card of the signed-in account."""
    person = dbmod.fetch_named(conn, "SELECT p.id, p.name, p.staff_number, p.category, a.blocked, a.in_debt, "
                               "a.single_limit_fen, a.daily_limit_fen FROM accounts a JOIN persons p "
                               "ON p.id = a.person_id WHERE a.id = ?", (account_id,))
    assert person is not None, "session names an account that does not exist"
    card = dbmod.fetch_named(conn, "SELECT card_number, generation, status, expiry_yyyymmdd FROM cards "
                             "WHERE account_id = ? ORDER BY issued_ms DESC, generation DESC LIMIT 1", (account_id,))
    balances = registry.balances_of(conn, account_id)
    return {"person": person, "card": card, "balances": balances, "total_fen": sum(balances.values())}


def _render(template, **context):
    conn = dbmod.get_db()
    context.update(_holder(conn, g.account_id))
    return render_template(template, **context)


# --- sign in / out -------------------------------------------------------------------------------

@portal.route("/sign-in", methods=("GET", "POST"))
def sign_in():
    if request.method == "POST":
        conn = dbmod.get_db()
        now_ms = dbmod.now_ms()
        result = auth.check_cardholder(conn, request.form.get("staff_number", ""), request.form.get("pin", ""),
                                       now_ms)
        if isinstance(result, tuple):
            auth.start_cardholder_session(conn, person_id=result[0], account_id=result[1])
            return redirect(url_for("portal.home"))
        flash(t(*pin_rules.refusal_texts(result, now_ms)), "error")
        return render_template("portal/sign_in.html", staff_number=request.form.get("staff_number", "")), 401
    return render_template("portal/sign_in.html", staff_number="")


@portal.post("/sign-out")
def sign_out():
    auth.end_cardholder_sessions(dbmod.get_db())
    return redirect(url_for("portal.sign_in"))


# --- pages ---------------------------------------------------------------------------------------

@portal.get("/")
@auth.cardholder_required
def home():
    return _render("portal/home.html")


@portal.get("/transactions")
@auth.cardholder_required
def transactions():
    conn = dbmod.get_db()
    today = numbers.parse_date(history.today(dbmod.now_ms()))
    start = numbers.parse_date(request.args.get("start")) or today - datetime.timedelta(days=DEFAULT_RANGE_DAYS)
    end = numbers.parse_date(request.args.get("end")) or today
    query_type = request.args.get("type", history.KIND_ALL)
    if query_type not in QUERY_TYPES:
        query_type = history.KIND_ALL
    page = numbers.parse_page(request.args.get("page"))
    status = 200
    if page is None:
        flash(t("页码无效（应为 1 至 %d）" % numbers.MAX_PAGE, "Invalid page number (1 to %d)" % numbers.MAX_PAGE),
              "error")
        page, status = 1, 400
    try:
        result = history.query(conn, g.account_id, start.isoformat(), end.isoformat(), query_type, 1, PAGE_ROWS)
        if page > result["total_pages"]:
            page = result["total_pages"]
        if page > 1:
            result = history.query(conn, g.account_id, start.isoformat(), end.isoformat(), query_type, page,
                                   PAGE_ROWS)
    except services.ServiceError as error:
        flash(_error_text(error), "error")
        result = {"rows": [], "page": 1, "total_pages": 1, "total_rows": 0}
    return _render("portal/transactions.html", start=start, end=end, query_type=query_type, rows=result["rows"],
                   page=result["page"], pages=result["total_pages"], total=result["total_rows"]), status


@portal.get("/loss")
@auth.cardholder_required
def loss():
    return _render("portal/loss.html")


@portal.post("/loss/report")
@auth.cardholder_required
def report_loss():
    try:
        done = cards.report_loss(dbmod.get_db(), g.account_id, pin=request.form.get("pin", ""), via=VIA)
    except services.ServiceError as error:
        flash(_error_text(error), "error")
    else:
        flash(t("挂失成功：卡号 %d 已停用，各终端将在数秒内拒绝此卡" % done["card_number"],
                "Card %d reported lost: every terminal refuses it within seconds" % done["card_number"]), "ok")
    return redirect(url_for("portal.loss"))


@portal.get("/phones")
@auth.cardholder_required
def phones():
    """The phones bound to this cardholder (绑定的手机), with a remove button each."""
    return _render("portal/phones.html", phones=binding.phones(dbmod.get_db(), g.person_id))


@portal.post("/phones/<phone_id>/remove")
@auth.cardholder_required
def remove_phone(phone_id):
    try:
        binding.remove_phone(dbmod.get_db(), g.person_id, phone_id, via=VIA)
    except services.ServiceError as error:
        if error.code == "phone_unknown":
            abort(404)       # another holder's phone id looks like a made-up one
        raise
    flash(t("已解除绑定：该手机须重新绑卡才能使用", "Phone removed: it has to bind again before it can be used"), "ok")
    return redirect(url_for("portal.phones"))


@portal.post("/loss/unfreeze")
@auth.cardholder_required
def unfreeze():
    try:
        cards.unfreeze(dbmod.get_db(), g.account_id, pin=request.form.get("pin", ""), via=VIA)
    except services.ServiceError as error:
        flash(_error_text(error), "error")
    else:
        flash(t("解挂成功：卡片可以正常使用", "Card unfrozen: it can be used again"), "ok")
    return redirect(url_for("portal.loss"))


@portal.route("/pin", methods=("GET", "POST"))
@auth.cardholder_required
def change_pin():
    if request.method == "POST":
        try:
            pin_service.change_pin(dbmod.get_db(), g.account_id, request.form.get("old_pin", ""),
                                   request.form.get("new_pin", ""), request.form.get("new_pin_again", ""), via=VIA)
        except services.ServiceError as error:
            flash(_error_text(error), "error")
        else:
            auth.renew_cardholder_session(dbmod.get_db())    # the change ended every other session
            flash(t("密码已修改", "PIN changed"), "ok")
        return redirect(url_for("portal.change_pin"))
    return _render("portal/pin.html")


@portal.route("/limits", methods=("GET", "POST"))
@auth.cardholder_required
def limits():
    if request.method == "POST":
        single_fen = numbers.parse_yuan(request.form.get("single_yuan"))
        daily_fen = numbers.parse_yuan(request.form.get("daily_yuan"))
        if single_fen is None or daily_fen is None:
            flash(t("请输入金额（元，最多两位小数）", "Enter amounts in yuan (at most two decimals)"), "error")
            return redirect(url_for("portal.limits"))
        try:
            limit_service.set_limits(dbmod.get_db(), g.account_id, single_fen, daily_fen, pin=request.form.get("pin", ""),
                                     via=VIA)
        except services.ServiceError as error:
            flash(_error_text(error), "error")
        else:
            flash(t("消费限额已设置，终端将在下次同步时生效", "Limits set: terminals apply them at their next sync"), "ok")
        return redirect(url_for("portal.limits"))
    return _render("portal/limits.html")


# --- recharge and electricity --------------------------------------------------------------------

@portal.route("/recharge", methods=("GET", "POST"))
@auth.cardholder_required
def recharge():
    conn = dbmod.get_db()
    if request.method == "POST":
        amount_fen = numbers.parse_yuan(request.form.get("amount_yuan"))
        try:
            if not amount_fen:
                raise services.ServiceError("bad_amount", recharge_service.MAX_ORDER_FEN)
            order = recharge_service.create_order(conn, g.account_id, amount_fen, request.form.get("channel", ""))
        except services.ServiceError as error:
            flash(_error_text(error), "error")
            return redirect(url_for("portal.recharge"))
        return redirect(url_for("portal.recharge_order", order_id=order["order_id"]))
    channels = [c for c in recharge_service.channels(conn) if c["online"]]
    return _render("portal/recharge.html", channels=channels, orders=recharge_service.list_orders(conn, g.account_id, 10))


@portal.get("/recharge/<order_id>")
@auth.cardholder_required
def recharge_order(order_id):
    conn = dbmod.get_db()
    try:
        order = recharge_service.get_order(conn, order_id, account_id=g.account_id)   # only the holder's own
    except services.ServiceError:
        abort(404)
    return _render("portal/recharge_order.html", order=order,
                   simulated_payments=current_app.config.get("SIMULATED_PAYMENTS", False))


@portal.post("/recharge/<order_id>/simulate-payment")
@auth.cardholder_required
def simulate_payment(order_id):
    """Demo only (SIMULATED_PAYMENTS): book the order paid as its channel's, through the same steps as
    a verified channel notice (recharge.simulate_payment; the server holds no channel's signing key)."""
    if not current_app.config.get("SIMULATED_PAYMENTS", False):
        abort(404)
    conn = dbmod.get_db()
    try:
        order = recharge_service.get_order(conn, order_id, account_id=g.account_id)
    except services.ServiceError:
        abort(404)
    try:
        recharge_service.simulate_payment(conn, order["order_id"])
    except services.ServiceError as error:
        flash(_error_text(error), "error")
    return redirect(url_for("portal.recharge_order", order_id=order_id))


@portal.route("/electricity", methods=("GET", "POST"))
@auth.cardholder_required
def electricity():
    if request.method == "POST":
        amount_fen = numbers.parse_yuan(request.form.get("amount_yuan"))
        floor = numbers.parse_int(request.form.get("floor"), 1, electricity_service.MAX_FLOOR)
        form_key = auth.submitted_form_key()
        if form_key is None:
            flash(t("页面已过期，请刷新后重新提交", "The page expired: reload it and submit again"), "error")
            return redirect(url_for("portal.electricity"))
        try:
            if not amount_fen:
                raise services.ServiceError("bad_amount", electricity_service.MAX_PAYMENT_FEN)
            # the form's one-time key: the same form submitted twice pays once and shows that receipt
            building, room = request.form.get("building", "").strip(), request.form.get("room", "").strip()
            done = electricity_service.pay(dbmod.get_db(), g.account_id, building, floor, room, amount_fen,
                                           pin=request.form.get("pin", ""), idempotency_key=form_key,
                                           kind=request.form.get("kind") or electricity_service.DEFAULT_KIND)
        except services.ServiceError as error:
            flash(_error_text(error), "error")
        else:
            flash(t("电费缴纳成功：%s 元（单号 %s）" % (forms_yuan(amount_fen), done["payment_id"]),
                    "Electricity paid: %s yuan (payment %s)" % (forms_yuan(amount_fen), done["payment_id"])), "ok")
            return redirect(url_for("portal.electricity", building=building, floor=floor, room=room))
        return redirect(url_for("portal.electricity"))
    return _render("portal/electricity.html", **_room_pick(dbmod.get_db()))


def _room_pick(conn):
    """The hall's lists for the page (选择楼栋，楼层，房间, step by step through the query string), and
    the picked room's recent payments with the payers' names masked."""
    picked = {"buildings": electricity_service.buildings(conn), "building": None, "floors": [], "floor": None,
              "rooms": [], "room": None, "kinds": [], "payments": None}
    building = next((entry for entry in picked["buildings"] if entry["code"] == request.args.get("building")), None)
    if building is None:
        return picked
    picked.update(building=building["code"], floors=building["floors"], kinds=building["kinds"])
    floor = numbers.parse_int(request.args.get("floor"), 1, electricity_service.MAX_FLOOR)
    if floor not in building["floors"]:
        return picked
    picked.update(floor=floor, rooms=[entry["room"] for entry in
                                      electricity_service.rooms(conn, building["code"], floor)["rooms"]])
    if request.args.get("room") in picked["rooms"]:
        picked["room"] = request.args["room"]
        picked["payments"] = electricity_service.room_payments(conn, building["code"], floor, picked["room"],
                                                               viewer_account_id=g.account_id)["payments"]
    return picked
