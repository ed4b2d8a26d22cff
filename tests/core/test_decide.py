"""decide(): every refusal, the limits, the PIN path and the offline caps (plain asserts, MicroPython-safe)."""
from firmware.core import card_layout, messages, records, wallets
from firmware.core.decide import (Accept, AccountView, Decline, DenyView, NeedPin, NOT_DENIED, OfflineCaps,
                                  decide, spendable_after_unacked)

TODAY = 20250310
CANTEEN = wallets.CATEGORY_CANTEEN
WATER = wallets.CATEGORY_WATER
CAPS = OfflineCaps(3, 3000)


def card(generation=1, holder=card_layout.HOLDER_STUDENT, expiry=20291231):
    return card_layout.Identity(1001, 501, generation, holder, expiry)


def account(main=10000, water=0, legacy=0, spent=0, single=0, daily=0, unacked=0, count=0, known=True):
    return AccountView(known, {"main": main, "water": water, "legacy": legacy}, spent, single, daily,
                       unacked, count)


def run(amount=1200, identity=None, deny=NOT_DENIED, acct=None, online=True, caps=CAPS, pin=False,
        category=CANTEEN):
    return decide(identity or card(), amount, category, TODAY, deny, acct or account(), online, caps,
                  pin_verified=pin)


def deny(**changes):
    values = {"terminal_revoked": False, "card_reason": None, "card_number_reason": None,
              "account_reason": None, "newest_generation": 0}
    values.update(changes)
    return DenyView(**values)


def test_accept_online_shows_balance_after_and_no_flags():
    result = run(1200)
    assert result == Accept([("main", 1200)], 8800, 0)


def test_accept_offline_sets_offline_flag():
    result = run(1200, online=False)
    assert isinstance(result, Accept)
    assert result.flags == records.FLAG_OFFLINE


def test_terminal_revoked_refuses_everything():
    assert run(deny=deny(terminal_revoked=True)) == Decline(messages.TERMINAL_REVOKED)


def test_invalid_amounts():
    assert run(0) == Decline(messages.INVALID_AMOUNT)
    assert run(-5) == Decline(messages.INVALID_AMOUNT)
    assert run(records.MAX_AMOUNT_FEN + 1) == Decline(messages.INVALID_AMOUNT)


def test_identity_only_card_cannot_pay():
    assert run(identity=card(holder=card_layout.HOLDER_IDENTITY_ONLY)) == Decline(messages.NO_WALLET)


def test_lost_card_generation():
    assert run(deny=deny(card_reason=1)) == Decline(messages.CARD_LOST)


def test_denied_card_with_unknown_reason_is_treated_as_lost():
    assert run(deny=deny(card_reason=99)) == Decline(messages.CARD_LOST)


def test_lost_card_number_every_generation():
    assert run(deny=deny(card_number_reason=1)) == Decline(messages.CARD_LOST)


def test_blocked_account():
    assert run(deny=deny(account_reason=3)) == Decline(messages.ACCOUNT_BLOCKED)
    assert run(deny=deny(account_reason=None, card_reason=2)) == Decline(messages.CARD_REPLACED)


def test_deny_beats_balance_and_expiry():
    result = run(identity=card(expiry=20200101), acct=account(main=0), deny=deny(card_reason=1))
    assert result == Decline(messages.CARD_LOST)


def test_expired_card():
    assert run(identity=card(expiry=TODAY - 1)) == Decline(messages.CARD_EXPIRED)
    assert isinstance(run(identity=card(expiry=TODAY)), Accept)      # valid through its last day
    assert isinstance(run(identity=card(expiry=0)), Accept)          # no expiry


def test_replaced_card_older_generation():
    assert run(identity=card(generation=1), deny=deny(newest_generation=2)) == Decline(messages.CARD_REPLACED)
    assert isinstance(run(identity=card(generation=2), deny=deny(newest_generation=2)), Accept)


def test_unknown_account():
    assert run(acct=account(known=False)) == Decline(messages.ACCOUNT_NOT_SYNCED)


def test_insufficient_balance():
    assert run(10001, acct=account(main=10000)) == Decline(messages.INSUFFICIENT_BALANCE)
    assert run(10000, acct=account(main=10000)) == Accept([("main", 10000)], 0, 0)


def test_canteen_never_spends_water_or_legacy():
    assert run(500, acct=account(main=100, water=5000, legacy=5000)) == Decline(messages.INSUFFICIENT_BALANCE)


def test_water_spends_water_then_legacy_then_main():
    result = run(700, acct=account(main=1000, water=300, legacy=200), category=WATER)
    assert result == Accept([("water", 300), ("legacy", 200), ("main", 200)], 800, 0)


def test_unacked_own_spend_is_taken_off_the_cached_balance():
    assert run(1200, acct=account(main=2000, unacked=1000, count=1)) == Decline(messages.INSUFFICIENT_BALANCE)
    assert run(1000, acct=account(main=2000, unacked=1000, count=1)) == Accept([("main", 1000)], 0, 0)


def test_unacked_spend_follows_wallet_order():
    adjusted = spendable_after_unacked({"water": 300, "legacy": 200, "main": 1000}, WATER, 600)
    assert adjusted == {"water": 0, "legacy": 0, "main": 900}


def test_over_single_limit_needs_pin_online():
    assert run(3000, acct=account(single=2000)) == NeedPin(messages.OVER_SINGLE_LIMIT_PIN)
    assert isinstance(run(2000, acct=account(single=2000)), Accept)


def test_over_daily_limit_counts_server_and_own_unacked_spend():
    acct = account(spent=3000, daily=5000, unacked=1000, count=1)
    assert run(1001, acct=acct) == NeedPin(messages.OVER_DAILY_LIMIT_PIN)
    assert isinstance(run(1000, acct=acct), Accept)


def test_over_limit_offline_cannot_check_pin():
    assert run(3000, acct=account(single=2000), online=False) == Decline(messages.PIN_NEEDS_NETWORK)


def test_pin_verified_passes_the_limit_but_not_the_balance():
    result = run(3000, acct=account(single=2000), pin=True)
    assert result == Accept([("main", 3000)], 7000, records.FLAG_PIN_VERIFIED)
    assert run(30000, acct=account(single=2000), pin=True) == Decline(messages.INSUFFICIENT_BALANCE)


def test_pin_does_not_lift_a_deny_entry():
    assert run(3000, acct=account(single=2000), pin=True, deny=deny(card_reason=1)) == \
        Decline(messages.CARD_LOST)


def test_offline_cap_count():
    assert run(100, online=False, acct=account(unacked=300, count=3)) == Decline(messages.OFFLINE_CAP_REACHED)
    assert isinstance(run(100, online=False, acct=account(unacked=200, count=2)), Accept)


def test_offline_cap_amount():
    assert run(1001, online=False, acct=account(unacked=2000, count=1)) == Decline(messages.OFFLINE_CAP_REACHED)
    assert isinstance(run(1000, online=False, acct=account(unacked=2000, count=1)), Accept)


def test_offline_caps_do_not_apply_online():
    assert isinstance(run(1001, online=True, acct=account(unacked=2000, count=3)), Accept)


def test_no_caps_configured():
    assert isinstance(run(5000, online=False, caps=OfflineCaps(None, None), acct=account(unacked=5000, count=99)),
                      Accept)
