"""Per-terminal settings (sync_server/terminal_settings.py) on each store: values checked against their
bounds and the terminal's kind before anything is written (a refusal leaves every row as it was),
the config counter moved by every change; the sync answer of the real server process carrying a
terminal's own values and menu over the site's, and nobody else's; `ykt fleet settings` showing,
setting and clearing them, its mistakes answered with their exit codes.
"""
import concurrent.futures
import json

import pytest

from firmware.core import wallets
from sync_server import db as dbmod, mistakes, registry, terminal_settings as settings
from sync_server.terminal_settings import SettingsError

MENU = {"rice": ["米饭", 100], "pork-2": ["红烧肉", 1250]}


@pytest.fixture
def site(database_location):
    conn = dbmod.init_db(database_location)
    canteen = registry.add_merchant(conn, "一食堂", "canteen 1", wallets.CATEGORY_CANTEEN)
    water = registry.add_merchant(conn, "开水房", "hot water", wallets.CATEGORY_WATER)
    ids = {"pos": registry.register_terminal(conn, canteen, location="一食堂二楼 3号窗口"),
           "pos2": registry.register_terminal(conn, canteen),
           "water": registry.register_terminal(conn, water), "canteen": canteen, "water_merchant": water}
    yield conn, ids
    conn.close()


def test_settings_are_stored_over_the_site_and_move_the_config_counter(site):
    conn, ids = site
    before = dbmod.counter_value(conn, "config_version")
    after = settings.set_settings(conn, ids["pos"], {"offline_cap_count": 3, settings.DISHES: MENU}, "tech",
                                  now_ms=1000)
    assert after == {"offline_cap_count": 3, "dishes": {"pork-2": ["红烧肉", 1250], "rice": ["米饭", 100]}}
    assert settings.settings_of(conn, ids["pos"]) == after and settings.settings_of(conn, ids["pos2"]) == {}
    assert settings.last_change(conn, ids["pos"]) == (1000, "tech")
    assert dbmod.counter_value(conn, "config_version") == before + 1
    settings.set_settings(conn, ids["water"], {"water_price_fen_per_litre": 25, "sync_interval_ms": 2000}, "tech")
    assert settings.clear_setting(conn, ids["pos"], "offline_cap_count", "tech2", now_ms=2000) == {"dishes": MENU}
    assert settings.set_settings(conn, ids["pos"], {settings.DISHES: {}}, "tech") == {}       # no menu is no menu
    assert dbmod.counter_value(conn, "config_version") == before + 4
    assert settings.site_settings(conn)["offline_cap_count"] == dbmod.setting(conn, "offline_cap_count")
    assert conn.execute("SELECT location FROM terminals WHERE id = ?", (ids["pos"],)).fetchone()[0] == "一食堂二楼 3号窗口"


def test_one_menu_for_a_merchant(site):
    conn, ids = site
    assert settings.set_menu_for_merchant(conn, ids["canteen"], MENU, "tech") == [ids["pos"], ids["pos2"]]
    assert settings.settings_of(conn, ids["pos2"])["dishes"] == MENU
    with pytest.raises(mistakes.Mistake, match="dishes"):
        settings.set_menu_for_merchant(conn, ids["water_merchant"], MENU, "tech")
    with pytest.raises(mistakes.UnknownRecord):
        settings.set_menu_for_merchant(conn, 9999, MENU, "tech")


REFUSALS = [
    ("offline_cap_count", -1, SettingsError), ("offline_cap_count", 1001, SettingsError),
    ("offline_cap_count", 3.0, SettingsError), ("offline_cap_count", True, SettingsError),
    ("offline_cap_count", "3", SettingsError), ("sync_interval_ms", 2 ** 70, SettingsError),
    ("sync_interval_ms", 999, SettingsError), ("offline_cap_amount_fen", 100001, SettingsError),
    ("no_such_key", 1, SettingsError), ("water_price_fen_per_litre", 30, mistakes.Mistake),
    ("dishes", [["rice", "米饭", 100]], SettingsError), ("dishes", {"Rice": ["米饭", 100]}, SettingsError),
    ("dishes", {"rice": ["米饭", 0]}, SettingsError), ("dishes", {"rice": ["米饭", 100001]}, SettingsError),
    ("dishes", {"rice": ["米饭", "1.00"]}, SettingsError), ("dishes", {"rice": ["", 100]}, SettingsError),
    ("dishes", {"rice": ["米" * 17, 100]}, SettingsError), ("dishes", {"rice": ["米饭"]}, SettingsError),
    ("dishes", {"rice": ["米\n饭", 100]}, SettingsError), ("dishes", {"r" * 17: ["米饭", 100]}, SettingsError),
    ("dishes", {"d%d" % n: ["菜", 100] for n in range(21)}, SettingsError),
]


def test_a_refused_value_changes_nothing(site, snapshot):
    """Each refusal on one database (a fresh one per case made this file the suite's slowest)."""
    conn, ids = site
    settings.set_settings(conn, ids["pos"], {"offline_cap_count": 4}, "tech")
    before = snapshot(conn)
    for key, value, refusal in REFUSALS:
        with pytest.raises(refusal) as raised:
            settings.set_settings(conn, ids["pos"], {"double_tap_window_ms": 500, key: value}, "tech")
        assert raised.value.zh and raised.value.en, key
        assert snapshot(conn) == before, (key, value)


def test_water_keys_and_menus_go_only_where_they_mean_something(site, snapshot):
    conn, ids = site
    before = snapshot(conn)
    for terminal, key, value in (("water", "dishes", MENU), ("water", "double_tap_window_ms", 100),
                                 ("pos", "water_max_session_fen", 100)):
        with pytest.raises(mistakes.Mistake, match="不适用于"):
            settings.set_settings(conn, ids[terminal], {key: value}, "tech")
    with pytest.raises(mistakes.UnknownRecord):
        settings.set_settings(conn, 9999, {"offline_cap_count": 3}, "tech")
    with pytest.raises(SettingsError):
        settings.clear_setting(conn, ids["pos"], "no_such_key", "tech")
    assert snapshot(conn) == before


def test_what_people_type():
    assert settings.value_from_text("offline_cap_amount_fen", "12.50", yuan=True) == 1250
    assert settings.value_from_text("offline_cap_amount_fen", "１２．５", yuan=True) == 1250
    assert settings.value_from_text("offline_cap_amount_fen", "1250") == 1250
    assert settings.value_from_text("sync_interval_ms", "2000", yuan=True) == 2000      # not money: as typed
    assert settings.value_from_text("dishes", '{"rice": ["米饭", 100]}') == {"rice": ["米饭", 100]}
    for key, text in (("offline_cap_count", "-1"), ("offline_cap_count", "abc"), ("offline_cap_count", "1e3"),
                      ("offline_cap_count", "9" * 30), ("offline_cap_amount_fen", "12.505"), ("dishes", "{rice"),
                      ("offline_cap_amount_fen", "1000.01"), ("offline_cap_count", "")):
        with pytest.raises(SettingsError):
            settings.value_from_text(key, text, yuan=True)
    assert settings.clean_location("  一食堂二楼\t 3号窗口 ") == "一食堂二楼 3号窗口"
    assert settings.clean_location("   ") is None and settings.clean_location(None) is None
    for bad in ("x" * 41, "一食堂\x00", "y" * 10000):
        with pytest.raises(SettingsError):
            settings.clean_location(bad)
    message = str(pytest.raises(SettingsError, settings.check_value, "offline_cap_amount_fen", -5).value)
    assert "0.00 至 1000.00 元" in message and "0 to 100000 fen" in message


def test_the_sync_answer_carries_the_terminals_own_settings(live_server):
    server = live_server
    pos, other = server.add_terminal(), None
    try:
        other = server.add_terminal(merchant_id=pos.merchant_id)
        conn = server.connect()
        try:
            settings.set_settings(conn, pos.terminal_id, {"offline_cap_count": 2, "sync_interval_ms": 1500,
                                                          "dishes": MENU}, "tech")
            site_count = dbmod.setting(conn, "offline_cap_count")
        finally:
            conn.close()
        config = pos.sync()["config"]
        assert config["offline_cap_count"] == 2 and config["sync_interval_ms"] == 1500
        assert config["dishes"] == MENU and config["offline_cap_amount_fen"] > 0
        others = other.sync()["config"]
        assert others["offline_cap_count"] == site_count and others["dishes"] == {}
        assert others["version"] == config["version"]
        assert pos.sync(config_version=config["version"])["config"] is None      # current: not sent again
        conn = server.connect()
        try:
            settings.clear_setting(conn, pos.terminal_id, "dishes", "tech")
        finally:
            conn.close()
        again = pos.sync(config_version=config["version"])["config"]
        assert again["version"] > config["version"] and again["dishes"] == {} and again["offline_cap_count"] == 2
        assert other.sync(config_version=config["version"])["config"]["offline_cap_count"] == site_count
    finally:
        pos.close()
        if other is not None:
            other.close()


def test_ykt_fleet_settings(live_server):
    server = live_server
    pos = server.add_terminal()
    pos.close()
    tid = str(pos.terminal_id)
    done = server.ykt("fleet", "settings", "--terminal", tid, "--set", "offline_cap_count=3", "--set",
                      'dishes={"rice": ["米饭", 100]}', "--operator", "li")
    assert done.returncode == 0, done.stderr
    assert "已保存" in done.stdout and "rice 米饭 1.00" in done.stdout
    shown = json.loads(server.ykt("fleet", "settings", "--terminal", tid, "--json").stdout)
    assert shown["settings"] == {"offline_cap_count": 3, "dishes": {"rice": ["米饭", 100]}}
    assert shown["effective"]["offline_cap_count"] == 3 and shown["site"]["offline_cap_count"] != 3
    assert shown["effective"]["sync_interval_ms"] == shown["site"]["sync_interval_ms"]
    mistaken = ((["--set", "offline_cap_count=-1"], mistakes.EXIT_MALFORMED, "offline_cap_count"),
                (["--set", "nope=1"], mistakes.EXIT_MALFORMED, "nope"),
                (["--set", "offline_cap_count"], mistakes.EXIT_MALFORMED, "KEY=VALUE"),
                (["--set", "water_price_fen_per_litre=20"], mistakes.EXIT_REFUSED, "water_price"),
                (["--clear", "nope"], mistakes.EXIT_MALFORMED, "nope"),
                (["--terminal", "9999"], mistakes.EXIT_UNKNOWN, "9999"))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda argv: server.ykt("fleet", "settings", "--terminal", tid, "--lang", "en",
                                                        "--set", "sync_interval_ms=2000", *argv),
                                [argv for argv, _code, _text in mistaken]))
    for (argv, code, text), refused in zip(mistaken, answers):
        assert refused.returncode == code and text in refused.stderr and "Traceback" not in refused.stderr, argv
    cleared = server.ykt("fleet", "settings", "--terminal", tid, "--clear", "offline_cap_count", "--clear", "dishes",
                         "--json")
    assert json.loads(cleared.stdout)["settings"] == {}       # and the refused --set sync_interval_ms never landed
