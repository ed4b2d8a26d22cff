"""What a page says and how: its language (Chinese first; `?lang=en` or `?lang=zh` sets a `lang`
cookie that later pages follow) and the formats of money, times and dates that templates and views
share. Filled into the Jinja environment by sync_server/web/__init__.py's init_app.
"""
import datetime

from flask import current_app, g, request

LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE_S = 365 * 24 * 3600
BEIJING = datetime.timezone(datetime.timedelta(hours=8))


def pick_lang():
    asked = request.args.get("lang")
    if asked in ("zh", "en"):
        g.lang, g.set_lang_cookie = asked, True
    else:
        g.lang, g.set_lang_cookie = ("en" if request.cookies.get(LANG_COOKIE) == "en" else "zh"), False


def remember_lang(response):
    if getattr(g, "set_lang_cookie", False):
        response.set_cookie(LANG_COOKIE, g.lang, max_age=LANG_COOKIE_MAX_AGE_S, httponly=True, samesite="Lax",
                            secure=current_app.config["SESSION_COOKIE_SECURE"])
    return response


def t(zh, en):
    """The text in the page's language (templates call it as t("余额", "Balance"))."""
    return en if getattr(g, "lang", "zh") == "en" else zh


def yuan(fen):
    """Fen as yuan with two decimals, from integers only (no float rounding on money)."""
    if fen is None:
        return ""
    sign = "-" if fen < 0 else ""
    return "%s%d.%02d" % (sign, abs(fen) // 100, abs(fen) % 100)


def signed_yuan(fen):
    return ("+" if fen > 0 else "") + yuan(fen)


def error_text(error):
    """A refusal's text in the page language (BilingualError), else the exception's own text."""
    text = getattr(error, "text", None)
    return text(g.lang) if callable(text) else str(error)


def beijing_time(time_ms):
    return datetime.datetime.fromtimestamp(time_ms / 1000, BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def expiry_date(yyyymmdd):
    if not yyyymmdd:
        return ""
    year, month, day = yyyymmdd // 10000, yyyymmdd // 100 % 100, yyyymmdd % 100
    return ("%d-%02d-%02d" % (year, month, day)) if getattr(g, "lang", "zh") == "en" else \
        ("%d年%d月%d日" % (year, month, day))


# The phone app's messages that its scripts show (sync_server/web/phone_app.py hands the page those of
# its language). The server's own refusals carry both languages already (message_zh / message_en).
# "%s" / "%d" are filled in by the script.
PHONE_APP_TEXTS = {
    "offline": ("离线", "Offline"),
    "balance_as_of": ("余额更新于 %s", "Balance as of %s"),
    "seconds_left": ("%d 秒后自动刷新", "New code in %d s"),
    "paid": ("支付成功 ¥%s", "Paid ¥%s"),
    "network_needed": ("网络不可用，请联网后重试", "No network: try again when online"),
    "cert_expired": ("付款码已过期，请联网后打开本页更新", "The payment code has expired: open this page online to renew it"),
    "stopped": ("付款码已停用", "The payment code is stopped"),
    "stop_confirm": ("再点一次确认停用", "Tap again to stop it"),
    "pin_changed": ("交易密码已修改，请用新密码开通付款码", "PIN changed: enable the payment code with the new PIN"),
    "pin_mismatch": ("两次输入的新密码不一致", "the two new PINs differ"),
    "pin_required": ("请输入交易密码", "enter the card PIN"),
    "fields_required": ("请填写姓名、学工号和交易密码", "enter the name, the staff/student number and the PIN"),
    "no_ed25519": ("此浏览器不支持付款码所需的 Ed25519 签名，请升级浏览器",
                   "this browser lacks the Ed25519 signatures the payment code needs: update it"),
    "offline_tip": ("离线时，每次付款后请点刷新再付下一笔", "Offline: tap refresh after each payment before the next"),
    "error": ("出错了，请重试", "Something went wrong: try again"),
    # the other pages of the phone app (static/app/app_shell.js and each page's own script)
    "app_name": ("校园一卡通", "Campus card"),
    "loading": ("加载中…", "Loading…"),
    "signed_out": ("登录已失效，请重新绑定校园卡", "Signed out: bind your campus card again"),
    "name_required": ("请输入姓名", "enter your name"),
    "number_required": ("请输入学工号", "enter your staff/student number"),
    "pin_six_digits": ("交易密码应为6位数字", "the PIN is 6 digits"),
    "pin_confirm_required": ("请再输入一次新密码", "enter the new PIN again"),
    "pin_same": ("新密码不能与原密码相同", "the new PIN must differ from the old one"),
    "pin_weak": ("新密码过于简单（如 111111、123456），请换一个", "the new PIN is too easy to guess (like 111111 or 123456)"),
    "pin_changed_here": ("交易密码已修改", "PIN changed"),
    "amount_required": ("请输入金额", "enter the amount"),
    "amount_format": ("金额应为元，最多两位小数，如 12.50", "the amount is in yuan with at most two decimals, like 12.50"),
    "amount_positive": ("金额应大于 0", "the amount must be above 0"),
    "amount_over_cap": ("单次最多 %s 元", "at most %s yuan at a time"),
    "amount_over_balance": ("余额不足：最多 %s 元", "not enough money: at most %s yuan"),
    "yuan_unit": ("元", "yuan"),
    "wallet_main": ("主钱包", "Main wallet"),
    "wallet_water": ("小钱包", "Water wallet"),
    "wallet_legacy": ("原卡余额", "Old card"),
    "balance_after": ("余额 %s", "balance %s"),
    "place_unknown": ("其他", "other"),
    "card_active": ("正常", "in use"),
    "card_lost": ("已挂失", "reported lost"),
    "card_none": ("尚未发卡", "no card issued yet"),
    "card_number": ("卡号 %s", "card no. %s"),
    "account_blocked": ("账户已冻结", "account blocked"),
    "account_in_debt": ("余额为负，请充值", "below zero: please top up"),
    "loss_done": ("挂失成功，卡片已不能消费", "Reported lost: the card pays for nothing now"),
    "unfreeze_done": ("解挂成功，卡片恢复使用", "Unfrozen: the card works again"),
    "date_required": ("请选择日期", "choose a date"),
    "date_order": ("起始日期不能晚于截止日期", "the start comes after the end"),
    "date_span": ("查询跨度不能超过 %d 天", "at most %d days at a time"),
    "bills_count": ("共 %d 条，已显示 %d 条", "%d lines, %d shown"),
    "limit_none": ("未设置", "none"),
    "limit_order": ("单笔限额不能超过每日限额", "the per-payment limit cannot be above the daily one"),
    "limits_saved": ("限额已保存", "Limits saved"),
    "this_phone": ("本机", "this phone"),
    "never": ("从未", "never"),
    "phone_facts": ("绑定于 %s · 最近使用 %s", "bound %s · last used %s"),
    "remove_phone": ("解除绑定", "Remove"),
    "remove_this_phone": ("解除本机绑定", "Remove this phone"),
    "remove_confirm": ("再点一次确认解除", "Tap again to remove"),
    "phone_removed": ("已解除绑定", "Removed"),
    "this_phone_removed": ("本机已解除绑定", "This phone is no longer bound"),
    "water_count": ("共 %d 条用水记录", "%d water lines"),
    "channel_alipay": ("支付宝", "Alipay"),
    "channel_wechat": ("微信支付", "WeChat Pay"),
    "channel_ccb": ("建行龙支付", "CCB Long Pay"),
    "channel_required": ("请选择支付方式", "choose how to pay"),
    "order_pending": ("待支付", "waiting for payment"),
    "order_paid": ("已到账", "paid"),
    "order_closed": ("已关闭", "closed"),
    "pay_go": ("点【去支付】，在%s中完成支付", "Tap Pay now and pay in %s"),
    "pay_waiting": ("订单已创建，请在%s中完成支付，到账后此页自动显示", "Order made: pay in %s; this page shows it once paid"),
    "pay_in_channel_app": ("请在%s App 内打开本页支付", "open this page inside the %s app to pay"),
    "recharge_done": ("充值成功", "Topped up"),
    "recharge_done_balance": ("充值成功，余额 %s 元", "Topped up: balance %s yuan"),
    "choose_building": ("请选择楼栋", "Choose the building"),
    "choose_building_first": ("请先选择楼栋", "Choose the building first"),
    "choose_floor": ("请选择楼层", "Choose the floor"),
    "choose_floor_first": ("请先选择楼层", "Choose the floor first"),
    "choose_room": ("请选择房间", "Choose the room"),
    "floor_name": ("%d 层", "floor %d"),
    "payer_me": ("我", "me"),
    "electricity_lighting": ("照明用电", "lighting"),
    "electricity_aircon": ("空调用电", "air conditioning"),
    "meter_pending": ("电表充值中", "reaching the meter"),
    "meter_delivered": ("已充入电表", "on the meter"),
    "meter_failed": ("电表充值失败，请咨询服务大厅", "the meter refused it: ask the service hall"),
    "room_name": ("%s %s 层 %s", "%s, floor %s, room %s"),
    "photo_face": ("人脸采集", "Face photo"),
    "photo_id_photo": ("证件照采集", "ID photo"),
    "photo_face_about": ("采集后可在食堂消费机、门禁刷脸。", "For paying and entering by face."),
    "photo_id_photo_about": ("证件照用于校园卡和学校各项业务。", "The photo on your card and campus records."),
    "photo_on_file": ("已采集", "on file"),
    "photo_none": ("尚未采集", "none on file yet"),
    "photo_required": ("请拍照或选择一张照片", "take or pick a photo"),
    "photo_type": ("请选择一张照片（图片文件）", "choose a photo (an image file)"),
    "photo_too_big": ("照片不能超过 %d MB", "the photo must be %d MB at most"),
    "photo_unreadable": ("无法读取这张照片，请换一张", "this photo cannot be read: choose another"),
    "photo_done": ("上传成功", "Uploaded"),
}
