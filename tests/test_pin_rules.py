"""The PIN rules without a database: weak PINs refused when one is chosen, and what a refused check
tells the person (tries left, how long a lockout lasts). The counts themselves, on each store, are in
test_services_pins.py."""
import datetime

import pytest
from hypothesis import given, strategies as st

from sync_server import pin_rules

ID_NUMBER = "110105199803150014"       # born 1998-03-15
NOW_MS = 1_790_000_000_000
DIGITS = st.text(alphabet="0123456789", min_size=6, max_size=6)
BIRTH_DATES = st.dates(min_value=datetime.date(1930, 1, 1), max_value=datetime.date(2020, 12, 31))


def _id_number(born, tail="0014"):
    return "110105%s%s" % (born.strftime("%Y%m%d"), tail)


def _straight_runs():
    runs = set()
    for start in range(10):
        up = "".join(str((start + step) % 10) for step in range(6))
        runs.update((up, up[::-1]))
    return runs


RUNS = _straight_runs()


# --- weak PINs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pin, reason", [
    ("111111", "pin_weak_same_digit"), ("000000", "pin_weak_same_digit"),
    ("123456", "pin_weak_run"), ("654321", "pin_weak_run"), ("234567", "pin_weak_run"), ("890123", "pin_weak_run"),
    ("210987", "pin_weak_run"),
    ("980315", "pin_weak_birthday"),    # YYMMDD
    ("031598", "pin_weak_birthday"),    # MMDDYY
    ("150398", "pin_weak_birthday"),    # DDMMYY
    ("199803", "pin_weak_birthday"),    # YYYYMM
    ("031998", "pin_weak_birthday"),    # MMYYYY
    ("703157", "pin_weak_birthday"),    # MMDD inside
    ("150014", "pin_weak_initial"),     # the last six of the ID number
    ("802417", None), ("135790", None), ("246813", None), ("123457", None), ("112233", None),
])
def test_each_rule_names_itself(pin, reason):
    assert pin_rules.weak_pin_reason(pin, ID_NUMBER) == reason


def test_without_an_id_number_the_initial_pin_comes_from_the_staff_number_and_no_birthday_applies():
    assert pin_rules.weak_pin_reason("000123", None, "S2024000123") == "pin_weak_initial"
    assert pin_rules.weak_pin_reason("980315", None, "S2024000123") is None
    assert pin_rules.weak_pin_reason("980315", None, None) is None


def test_old_15_digit_ids_and_ids_with_an_x_give_their_birth_dates():
    assert pin_rules.birth_date("110105980315001") == datetime.date(1998, 3, 15)
    assert pin_rules.birth_date("11010519980315001X") == datetime.date(1998, 3, 15)
    assert pin_rules.weak_pin_reason("980315", "11010519980315001X") == "pin_weak_birthday"
    assert pin_rules.weak_pin_reason("980315", "110105980315001") == "pin_weak_birthday"


@pytest.mark.parametrize("id_number", ["", None, "S2024001", "110105199813450014", "1101051998031500", "ABC"])
def test_an_id_without_a_real_birth_date_refuses_no_birthday(id_number):
    assert pin_rules.birth_date(id_number) is None
    assert pin_rules.weak_pin_reason("031545", id_number, "S1") is None


def test_a_pin_of_the_wrong_shape_is_left_to_the_format_rule():
    for pin in ("12345", "1234567", "12345a", "", None, 123456):
        assert pin_rules.weak_pin_reason(pin, ID_NUMBER) is None


def test_only_a_small_share_of_all_pins_is_refused_for_one_person():
    """Exhaustive for one ID number: the rules leave almost every PIN free (under 0.1%)."""
    refused = sum(1 for n in range(10 ** 6) if pin_rules.weak_pin_reason("%06d" % n, ID_NUMBER) is not None)
    assert 20 < refused < 1000


@given(st.integers(0, 9))
def test_one_digit_six_times_is_always_refused(digit):
    assert pin_rules.weak_pin_reason(str(digit) * 6, ID_NUMBER) == "pin_weak_same_digit"


@given(st.sampled_from(sorted(RUNS)), BIRTH_DATES)
def test_every_straight_run_is_refused(run, born):
    assert pin_rules.weak_pin_reason(run, _id_number(born)) in ("pin_weak_run", "pin_weak_same_digit",
                                                                 "pin_weak_initial")


@given(BIRTH_DATES, st.sampled_from(["%y%m%d", "%m%d%y", "%d%m%y", "%Y%m", "%m%Y"]))
def test_every_listed_birthday_form_is_refused(born, form):
    pin = born.strftime(form)
    reason = pin_rules.weak_pin_reason(pin, _id_number(born))
    assert reason is not None
    assert reason == "pin_weak_birthday" or pin in RUNS or len(set(pin)) == 1 or pin == _id_number(born)[-6:]


@given(DIGITS, BIRTH_DATES, st.text(alphabet="0123456789", min_size=3, max_size=3), st.sampled_from("0123456789X"))
def test_a_refusal_is_exactly_one_of_the_documented_rules(pin, born, sequence, check):
    """An independent statement of the rules: refused if and only if one of them holds."""
    id_number = _id_number(born, sequence + check)
    month_day, day_month = born.strftime("%m%d"), born.strftime("%d%m")
    initial = pin_rules.initial_pin(id_number, None)
    expected = (pin == initial or len(set(pin)) == 1 or pin in RUNS or month_day in pin or day_month in pin
                or pin in (born.strftime("%Y%m"), born.strftime("%m%Y")))
    reason = pin_rules.weak_pin_reason(pin, id_number)
    assert (reason is not None) == expected
    assert reason is None or reason.startswith("pin_weak_")
    if pin == initial:
        assert reason == "pin_weak_initial"


# --- what a refused check says ---------------------------------------------------------------------

def test_a_wrong_pin_counts_down_and_warns_before_the_last_try():
    texts = [pin_rules.refusal_texts(pin_rules.PinOutcome("pin_wrong", tries_left=n), NOW_MS) for n in (4, 3, 2, 1)]
    assert [zh for zh, _ in texts[:3]] == ["密码错误，还可尝试 %d 次" % n for n in (4, 3, 2)]
    assert texts[3][0] == "密码错误，还可尝试 1 次；再错将锁定 30 分钟"
    assert texts[0][1] == "wrong PIN: 4 tries left" and "30 minutes" in texts[3][1]
    assert pin_rules.feedback(pin_rules.PinOutcome("pin_wrong", tries_left=2), NOW_MS) == {"tries_left": 2}


def test_a_lockout_says_for_how_long_and_until_when_in_beijing_time():
    until_ms = int(datetime.datetime(2026, 5, 4, 14, 35, tzinfo=datetime.timezone.utc).timestamp() * 1000)
    locked = pin_rules.PinOutcome("pin_locked", locked_until_ms=until_ms)
    zh, en = pin_rules.refusal_texts(locked, until_ms - 29 * 60000 - 30000)
    assert zh == "密码错误次数过多，已锁定，请 30 分钟后（北京时间 22:35 以后）再试，或到服务大厅办理"
    assert "try again in 30 minutes (after 22:35 Beijing time)" in en
    assert pin_rules.refusal_texts(locked, until_ms - 1000)[0].startswith("密码错误次数过多，已锁定，请 1 分钟后")
    assert pin_rules.feedback(locked, until_ms - 90500) == {"locked_until_ms": until_ms, "retry_after_s": 91}


def test_other_codes_keep_their_plain_message_and_add_nothing():
    assert pin_rules.refusal_texts("pin_format", NOW_MS) == ("密码应为6位数字", "the PIN must be 6 digits")
    assert pin_rules.refusal_texts("pin_wrong", NOW_MS)[0] == "密码错误"
    assert pin_rules.feedback("pin_ok", NOW_MS) == {} and pin_rules.feedback("pin_wrong", NOW_MS) == {}


def test_the_outcome_is_its_code():
    outcome = pin_rules.PinOutcome("pin_wrong", tries_left=3)
    assert outcome == "pin_wrong" and outcome not in pin_rules.PIN_ACCEPTED and type(str(outcome)) is str
    assert {"pin_wrong": 1}[outcome] == 1
