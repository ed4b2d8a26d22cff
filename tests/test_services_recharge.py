"""Recharge channel rules as a property, on every store: whatever notifications arrive - repeated,
interleaved across orders, `closed` before or after `paid`, forged ones mixed in - each order paid
credits its wallet exactly once, nothing else moves money, and the ledger stays balanced. The
notices are the channels' own (simulators/pay_gateways.py's sandboxes, verified by sync_server/channels)."""
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from firmware.core import card_layout
from simulators import pay_gateways
from sync_server import channels, db as dbmod, ledger, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import recharge

# what each channel sends for an order that will not be paid: Alipay and WeChat Pay close it, CCB
# reports a failed attempt (acknowledged, nothing changes)
NOT_PAID = {"alipay": "closed", "wechat": "closed", "ccb": "failed"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(the sandboxes, the server's channel handlers for them, a forger with keys of its own)."""
    gateways = pay_gateways.PayGateways()
    return gateways, channels.load(gateways.install(tmp_path_factory.mktemp("site"))), pay_gateways.PayGateways()


# (order index, status, forged?) for orders 0..3
notifications = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["paid", "closed"]), st.booleans()),
                         max_size=24)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=notifications, amounts=st.lists(st.integers(1, recharge.MAX_ORDER_FEN), min_size=4, max_size=4),
       channel_picks=st.lists(st.sampled_from(recharge.ONLINE_CHANNELS), min_size=4, max_size=4))
def test_each_paid_order_credits_once(new_location, site, events, amounts, channel_picks):
    gateways, handlers, forger = site
    conn = dbmod.init_db(new_location())
    try:
        _, account_id = registry.add_person(conn, "周测试", card_layout.HOLDER_STUDENT, staff_number="P1",
                                            set_initial_pin=False)
        orders = [recharge.create_order(conn, account_id, amount, channel, now_ms=1000 + index)
                  for index, (amount, channel) in enumerate(zip(amounts, channel_picks))]
        paid = set()
        for index, status, forged in events:
            order = orders[index]
            channel = order["channel"]
            delivery = gateways.notice(order, status if status == "paid" else NOT_PAID[channel],
                                       signed_by=forger if forged else None)
            try:
                outcome, _ = recharge.handle_notification(conn, channel, handlers[channel], delivery.headers,
                                                          delivery.body)
            except recharge.ChannelRefused as refusal:
                assert forged and refusal.code == "bad_signature"
                continue
            assert not forged
            if status == "paid":
                assert outcome == ("duplicate" if index in paid else "credited")
                paid.add(index)
        assert registry.balances_of(conn, account_id)["main"] == sum(amounts[index] for index in paid)
        for index, order in enumerate(orders):
            stored = recharge.get_order(conn, order["order_id"])
            assert (stored["status"] == "paid") == (index in paid)
        per_channel = {}
        for index in paid:
            per_channel[channel_picks[index]] = per_channel.get(channel_picks[index], 0) + amounts[index]
        for channel in recharge.ONLINE_CHANNELS:
            ledger_id = conn.execute("SELECT ledger_account_id FROM recharge_channels WHERE name = ?",
                                     (channel,)).fetchone()[0]
            assert SqliteStore(conn).balances([ledger_id])[ledger_id] == -per_channel.get(channel, 0)
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()


def test_cash_desk_recharge_is_an_order_paid_at_once(database_location):
    conn = dbmod.init_db(database_location)
    _, account_id = registry.add_person(conn, "吴现金", card_layout.HOLDER_STAFF, staff_number="C1", set_initial_pin=False)
    order = recharge.cash_recharge(conn, account_id, 2550, operator="hall-7")
    assert order["status"] == "paid" and order["channel"] == "cash" and order["operator"] == "hall-7"
    assert registry.balances_of(conn, account_id)["main"] == 2550
    assert SqliteStore(conn).balances([dbmod.LEDGER_CASH_DESK])[dbmod.LEDGER_CASH_DESK] == -2550
    _, identity_only = registry.add_person(conn, "郑访问", card_layout.HOLDER_IDENTITY_ONLY, staff_number="V1",
                                           set_initial_pin=False)
    for attempt in (lambda: recharge.cash_recharge(conn, identity_only, 100, operator="hall-7"),
                    lambda: recharge.create_order(conn, identity_only, 100, "alipay")):
        try:
            attempt()
        except recharge.ServiceError as refusal:
            assert refusal.code == "no_wallet"
        else:
            raise AssertionError("an identity-only card has no wallet to recharge")
    assert conn.execute("SELECT count(*) FROM recharge_orders WHERE account_id = ?", (identity_only,)).fetchone()[0] == 0


def test_stale_pending_orders_close_and_pending_orders_are_bounded(database_location):
    conn = dbmod.init_db(database_location)
    _, account_id = registry.add_person(conn, "钱限量", card_layout.HOLDER_STUDENT, staff_number="B1",
                                        set_initial_pin=False)
    for index in range(recharge.MAX_PENDING_ORDERS_PER_ACCOUNT):
        recharge.create_order(conn, account_id, 100, "ccb", now_ms=1000 + index)
    try:
        recharge.create_order(conn, account_id, 100, "ccb", now_ms=2000)
    except recharge.ServiceError as refusal:
        assert refusal.code == "too_many_pending" and refusal.status == 429
    else:
        raise AssertionError("pending orders must be bounded")
    assert recharge.close_stale_orders(conn, now_ms=1000 + recharge.PENDING_ORDER_TTL_MS + 10) == 10
    recharge.create_order(conn, account_id, 100, "ccb", now_ms=2000 + recharge.PENDING_ORDER_TTL_MS)


def test_a_forged_notification_holding_a_nul_is_refused_and_logged_on_every_store(database_location, site):
    """PostgreSQL text cannot hold NUL; the refusal log shows it as U+FFFD rather than failing."""
    conn = dbmod.init_db(database_location)
    _gateways, handlers, _forger = site
    with pytest.raises(recharge.ChannelRefused):
        recharge.handle_notification(conn, "alipay", handlers["alipay"], {}, b'{"order_id": "R\x001"}\x00')
    form = b"out_trade_no=R%001&trade_status=TRADE_SUCCESS&sign_type=RSA2&sign=AAAA\x00"
    with pytest.raises(recharge.ChannelRefused):
        recharge.handle_notification(conn, "ccb", handlers["ccb"], {}, form)
    assert conn.execute("SELECT channel, outcome, body FROM channel_notifications ORDER BY id").fetchall() == \
        [("alipay", "malformed", '{"order_id": "R\ufffd1"}\ufffd'),
         ("ccb", "malformed", "out_trade_no=R%001&trade_status=TRADE_SUCCESS&sign_type=RSA2&sign=AAAA\ufffd")]
    conn.close()
