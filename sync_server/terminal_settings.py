"""Per-terminal settings: the values one terminal runs with instead of the site's, a POS's dish menu,
and where a terminal stands (its location).

    settings_of(conn, terminal_id)              {key: value} of its overrides ({} when it has none)
    set_settings(conn, terminal_id, changes, by, now_ms, clear=())
                                                check every value first, then store them all (and drop
                                                the keys in `clear`); nothing changes on any refusal
    clear_setting(conn, terminal_id, key, by, now_ms)
    set_menu_for_merchant(conn, merchant_id, dishes, by, now_ms)
                                                one menu for every active terminal of a canteen merchant
    value_from_text(key, text, yuan=False)      what a person typed (fen keys in yuan on the pages)
    clean_location(text), set_location(conn, terminal_id, location)

The keys are the names terminal_api.current_config sends (SETTINGS, plus DISHES: {dish_id: [name,
price_fen]}, the shape firmware/core/pos.py's config "dishes" takes); each has bounds, and the kinds
of terminal it means something to, so a menu is never given to a water dispenser. The sync answer
carries configuration only when a terminal's config_version is behind the site's one counter (one
counter read per sync), so every change bumps that counter in its own transaction: every terminal
fetches its configuration at its next sync, and the one changed finds its new values in it.
"""
import collections
import json
import re

from firmware.core import pos, wallets
from sync_server import db as dbmod, fleet_status, numbers
from sync_server.mistakes import MalformedInput, Mistake, UnknownRecord


class SettingsError(MalformedInput):
    """A setting refused (unknown key, a value out of bounds, a malformed menu): nothing changed."""


Setting = collections.namedtuple("Setting", "key minimum maximum unit zh en categories")

_ALL = (wallets.CATEGORY_CANTEEN, wallets.CATEGORY_WATER, wallets.CATEGORY_ELECTRICITY, wallets.CATEGORY_ACTIVATION)
_SPENDING = (wallets.CATEGORY_CANTEEN, wallets.CATEGORY_WATER, wallets.CATEGORY_ELECTRICITY)
MAX_AMOUNT_FEN = pos.DEFAULT_CONFIG["max_amount_fen"]     # one canteen payment; no offline cap needs more

# Bounds are what a working terminal can live with: a sync at least every 10 minutes (fleet_status
# calls a terminal stale after that), a loss still enforced within seconds at the fastest.
SETTINGS = (
    Setting("sync_interval_ms", 1000, 600000, "ms", "同步间隔", "sync interval", _ALL),
    Setting("offline_cap_count", 0, 1000, "count", "离线限次（每账户）", "offline cap, taps per account", _SPENDING),
    Setting("offline_cap_amount_fen", 0, MAX_AMOUNT_FEN, "fen", "离线限额（每账户）", "offline cap, amount per account",
            _SPENDING),
    Setting("double_tap_window_ms", 0, 600000, "ms", "重复刷卡确认时间", "repeat-tap window",
            (wallets.CATEGORY_CANTEEN,)),
    Setting("water_price_fen_per_litre", 1, 1000, "fen", "水价（每升）", "water price per litre",
            (wallets.CATEGORY_WATER,)),
    Setting("water_max_session_fen", 1, 10000, "fen", "单次用水上限", "most one water session draws",
            (wallets.CATEGORY_WATER,)),
)
BY_KEY = {setting.key: setting for setting in SETTINGS}
DISHES = "dishes"
KEYS = tuple(BY_KEY) + (DISHES,)
DISH_CATEGORIES = (wallets.CATEGORY_CANTEEN,)

# A menu: as many dishes as one order may hold (pos.py's max_dishes); the first 12 by id get the
# keypad's F-keys (firmware/core/keypad.py), all of them a button on the cashier's screen.
MAX_MENU_DISHES = pos.DEFAULT_CONFIG["max_dishes"]
MAX_DISH_NAME_CHARS = 16
MAX_DISH_PRICE_FEN = MAX_AMOUNT_FEN
_DISH_ID = re.compile(r"[a-z0-9_-]{1,16}", re.ASCII)
MAX_LOCATION_CHARS = 40
MAX_BY_CHARS = 64
_UNITS = {"ms": ("毫秒", "ms"), "count": ("次", "taps")}


# --- checking values -----------------------------------------------------------------------------

def _shown(value):
    """A value as a message may repeat it: short, whatever was typed."""
    text = value if isinstance(value, str) else repr(value)
    return text[:40] + ("…" if len(text) > 40 else "")


def _yuan(fen):
    return "%d.%02d" % (fen // 100, fen % 100)


def bounds_text(setting, lang="zh"):
    """'0.00 至 1000.00 元' / '1000 to 600000 ms': the range a page or a refusal names."""
    if setting.unit == "fen":
        low, high = _yuan(setting.minimum), _yuan(setting.maximum)
        return ("%s to %s yuan" % (low, high)) if lang == "en" else "%s 至 %s 元" % (low, high)
    zh, en = _UNITS[setting.unit]
    return ("%d to %d %s" % (setting.minimum, setting.maximum, en)) if lang == "en" else \
        "%d 至 %d %s" % (setting.minimum, setting.maximum, zh)


def _known(key):
    if key != DISHES and key not in BY_KEY:
        raise SettingsError("未知的设置项 %s（可设：%s）" % (_shown(key), "、".join(KEYS)),
                            "unknown setting %s (known: %s)" % (_shown(key), ", ".join(KEYS)))


def check_value(key, value):
    """The value as stored (a menu in its canonical form); SettingsError when it is not one."""
    _known(key)
    if key == DISHES:
        return check_menu(value)
    setting = BY_KEY[key]
    if type(value) is not int or not setting.minimum <= value <= setting.maximum:
        in_fen = "（%d 至 %d 分）" % (setting.minimum, setting.maximum) if setting.unit == "fen" else ""
        in_fen_en = " (%d to %d fen)" % (setting.minimum, setting.maximum) if setting.unit == "fen" else ""
        raise SettingsError("%s（%s）应在 %s%s 之间，不能是 %s" % (setting.zh, key, bounds_text(setting), in_fen,
                                                          _shown(value)),
                            "%s (%s) must be %s%s, not %s" % (setting.en, key, bounds_text(setting, "en"), in_fen_en,
                                                            _shown(value)))
    return value


def check_menu(dishes):
    """{dish_id: [name, price_fen]} sorted by id, names stripped; SettingsError naming the first fault."""
    if not isinstance(dishes, dict):
        raise SettingsError("菜单应为 {菜品编号: [名称, 价格(分)]}", "a menu is {dish id: [name, price in fen]}")
    if len(dishes) > MAX_MENU_DISHES:
        raise SettingsError("菜单最多 %d 道菜，这里有 %d 道" % (MAX_MENU_DISHES, len(dishes)),
                            "a menu holds at most %d dishes, not %d" % (MAX_MENU_DISHES, len(dishes)))
    menu = {}
    for dish_id, entry in dishes.items():
        if not isinstance(dish_id, str) or not _DISH_ID.fullmatch(dish_id):
            raise SettingsError("菜品编号 %s 无效：应为 1 至 16 个小写字母、数字、_ 或 -" % _shown(dish_id),
                                "dish id %s is not valid: 1 to 16 of a-z, 0-9, _ and -" % _shown(dish_id))
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise SettingsError("菜品 %s 应为 [名称, 价格(分)]" % dish_id, "dish %s must be [name, price in fen]" % dish_id)
        name, price_fen = entry
        name = name.strip() if isinstance(name, str) else name
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_DISH_NAME_CHARS or not name.isprintable():
            raise SettingsError("菜品 %s 的名称应为 1 至 %d 个字符" % (dish_id, MAX_DISH_NAME_CHARS),
                                "dish %s needs a name of 1 to %d characters" % (dish_id, MAX_DISH_NAME_CHARS))
        if type(price_fen) is not int or not 1 <= price_fen <= MAX_DISH_PRICE_FEN:
            raise SettingsError("菜品 %s 的价格应在 0.01 至 %s 元之间" % (dish_id, _yuan(MAX_DISH_PRICE_FEN)),
                                "dish %s must cost 0.01 to %s yuan" % (dish_id, _yuan(MAX_DISH_PRICE_FEN)))
        menu[dish_id] = [name, price_fen]
    return dict(sorted(menu.items()))


def value_from_text(key, text, yuan=False):
    """The value of what a person typed for `key`: whole numbers (fen in yuan, "12.50", when `yuan`),
    a menu as JSON; SettingsError for anything else. Checked against the key's bounds."""
    _known(key)
    if key == DISHES:
        try:
            return check_menu(json.loads(text))
        except ValueError:
            raise SettingsError("菜单应为 JSON：{\"rice\": [\"米饭\", 100]}", "a menu is JSON: {\"rice\": [\"rice\", 100]}")
    setting = BY_KEY[key]
    if yuan and setting.unit == "fen":
        value = numbers.parse_yuan(text, maximum_fen=numbers.MAX_AMOUNT_FEN)
        if value is None:
            raise SettingsError("%s 应为元，最多两位小数（%s），不能是 %s" % (setting.zh, bounds_text(setting), _shown(text)),
                                "%s is in yuan with at most two decimals (%s), not %s"
                                % (setting.en, bounds_text(setting, "en"), _shown(text)))
    else:
        value = numbers.parse_int(text, 0, numbers.MAX_ID)
        if value is None:
            raise SettingsError("%s（%s）应为整数（%s），不能是 %s" % (setting.zh, key, bounds_text(setting), _shown(text)),
                                "%s (%s) is a whole number (%s), not %s"
                                % (setting.en, key, bounds_text(setting, "en"), _shown(text)))
    return check_value(key, value)


def applies_to(key, category):
    """Whether a terminal of merchant `category` runs with `key`."""
    return category in (DISH_CATEGORIES if key == DISHES else BY_KEY[key].categories)


def check_applies(key, category):
    """SettingsError for an unknown key, Mistake for one a terminal of `category` does not run with."""
    _known(key)
    if not applies_to(key, category):
        _refuse_kind(key, category)


def clean_location(text):
    """Where a terminal stands, as stored: stripped, None when blank; SettingsError when too long or
    holding control characters."""
    if text is None:
        return None
    if not isinstance(text, str) or len(text) > 4 * MAX_LOCATION_CHARS:
        raise SettingsError("位置最多 %d 个字符" % MAX_LOCATION_CHARS, "a location has at most %d characters"
                            % MAX_LOCATION_CHARS)
    text = " ".join(text.split())
    if len(text) > MAX_LOCATION_CHARS or not text.isprintable():
        raise SettingsError("位置最多 %d 个字符，不能有控制字符" % MAX_LOCATION_CHARS,
                            "a location has at most %d characters and no control characters" % MAX_LOCATION_CHARS)
    return text or None


# --- reading and storing -------------------------------------------------------------------------

def settings_of(conn, terminal_id):
    """The terminal's overrides, {key: value}; {} when it has none."""
    row = conn.execute("SELECT settings FROM terminal_settings WHERE terminal_id = ?", (terminal_id,)).fetchone()
    return json.loads(row[0]) if row else {}


def last_change(conn, terminal_id):
    """(updated_ms, updated_by) of the terminal's last settings change, or None."""
    row = conn.execute("SELECT updated_ms, updated_by FROM terminal_settings WHERE terminal_id = ?",
                       (terminal_id,)).fetchone()
    return (row[0], row[1]) if row else None


def site_settings(conn):
    """{key: value} of the site's own values, what a terminal without overrides runs with."""
    return {setting.key: dbmod.setting(conn, setting.key) for setting in SETTINGS}


def _category_of(conn, terminal_id):
    row = conn.execute("SELECT m.category FROM terminals t JOIN merchants m ON m.id = t.merchant_id "
                       "WHERE t.id = ?", (terminal_id,)).fetchone()
    if row is None:
        raise UnknownRecord("终端 %d 不存在" % terminal_id, "terminal %d does not exist" % terminal_id)
    return row[0]


def _refuse_kind(key, category):
    zh, en = fleet_status.KINDS.get(category, ("终端", "terminal"))
    raise Mistake("%s 不适用于%s" % (key, zh), "%s does not apply to a %s" % (key, en))


def _store(conn, terminal_id, settings, by, now_ms):
    assert isinstance(by, str) and 0 < len(by) <= MAX_BY_CHARS, by
    conn.execute("INSERT INTO terminal_settings (terminal_id, settings, updated_ms, updated_by) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (terminal_id) DO UPDATE SET settings = excluded.settings, "
                 "updated_ms = excluded.updated_ms, updated_by = excluded.updated_by",
                 (terminal_id, json.dumps(settings, ensure_ascii=False, sort_keys=True), now_ms, by))


def set_settings(conn, terminal_id, changes, by, now_ms=None, clear=()):
    """Store `changes` ({key: value}) over the terminal's overrides and drop the keys in `clear`;
    returns the overrides after. Every value is checked before anything is written; an empty menu
    is no menu. Joins the caller's transaction (a page logs the change in the same one)."""
    checked = {key: check_value(key, value) for key, value in dict(changes).items()}
    for key in clear:
        _known(key)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.joined_transaction(conn):
        category = _category_of(conn, terminal_id)
        for key in checked:
            check_applies(key, category)
        settings = settings_of(conn, terminal_id)
        settings.update(checked)
        for key in clear:
            settings.pop(key, None)
        if settings.get(DISHES) == {}:
            del settings[DISHES]
        _store(conn, terminal_id, settings, by, now_ms)
        dbmod.next_counter(conn, "config_version")      # every terminal fetches config at its next sync
    return settings


def clear_setting(conn, terminal_id, key, by, now_ms=None):
    """Back to the site's value for `key` (no menu, for DISHES); returns the overrides after."""
    return set_settings(conn, terminal_id, {}, by, now_ms, clear=(key,))


def set_menu_for_merchant(conn, merchant_id, dishes, by, now_ms=None):
    """The same menu for every active terminal of a canteen merchant, in one transaction; returns
    their ids."""
    menu = check_menu(dishes)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.joined_transaction(conn):
        row = conn.execute("SELECT category FROM merchants WHERE id = ?", (merchant_id,)).fetchone()
        if row is None:
            raise UnknownRecord("商户 %d 不存在" % merchant_id, "merchant %d does not exist" % merchant_id)
        check_applies(DISHES, row[0])
        terminal_ids = [found[0] for found in conn.execute(
            "SELECT id FROM terminals WHERE merchant_id = ? AND status = 'active' ORDER BY id", (merchant_id,))]
        for terminal_id in terminal_ids:
            set_settings(conn, terminal_id, {DISHES: menu}, by, now_ms)
    return terminal_ids


def set_location(conn, terminal_id, location):
    """Record where the terminal stands (clean_location's form; None: not recorded)."""
    location = clean_location(location)
    with dbmod.joined_transaction(conn):
        if not conn.execute("UPDATE terminals SET location = ? WHERE id = ?", (location, terminal_id)).rowcount:
            raise UnknownRecord("终端 %d 不存在" % terminal_id, "terminal %d does not exist" % terminal_id)
    return location
