"""Things that go wrong on purpose in `ykt demo`, so the nightly close has something to find.

    --inject-double-spend       one cardholder with little money pays at two windows that are both
                                offline at the time; each window accepts from its cached balance, and
                                once both upload the account is below zero (and blocked)
    --inject-clone              a copy of one card is made before the rush (its image file copied, as
                                a cloner copies sectors); the card and its copy are used one after the
                                other at two windows, so the same tap counter comes in twice
    --inject-statement-mismatch a few cardholders recharge through the Alipay channel (its sandbox's
                                RSA2-signed notices, simulators/pay_gateways.py, verified by the
                                server's sync_server/channels/alipay.py) and the channel's statement
                                of the day is written with one amount wrong

What was injected goes to `injected.json` in the run directory (the day, the account, the card, the
order), and the statement to `statement-alipay-<day>.csv`, ready for `ykt finance import-statement`.
Cardholders picked here have their planned taps handed to a neighbour, so nothing else they do
interferes with the injected taps. Everything is derived from the seed.
"""
import json
import os
import random
import shutil

from simulators import lunch
from sync_server import db as dbmod
from sync_server.finance import day_of_ms, day_text

STATEMENT_RECHARGES = 5
STATEMENT_MISMATCH_FEN = 100         # the channel's line says one yuan more than the order
_DOUBLE_SPEND_SHARE = 0.6            # each of the two taps spends this share of the balance
_DOUBLE_SPEND_WINDOW = 0.45          # the two windows stay offline together for this share of the rush


class InjectedTap(lunch.Tap):
    """A planned tap that may name a card image path instead of the cardholder's own card."""
    __slots__ = ("card",)

    def __init__(self, *args, card=None, **kwargs):
        lunch.Tap.__init__(self, *args, **kwargs)
        self.card = card


def wanted(args):
    return any(getattr(args, name, False) for name in ("inject_double_spend", "inject_clone",
                                                        "inject_statement_mismatch"))


def add_options(parser):
    parser.add_argument("--inject-double-spend", action="store_true",
                        help="脱机双终端透支 / an offline double spend at two windows")
    parser.add_argument("--inject-clone", action="store_true", help="复制卡 / a cloned card used at two windows")
    parser.add_argument("--inject-statement-mismatch", action="store_true",
                        help="渠道对账单金额不符 / a channel statement line with a wrong amount")


class Injector:
    def __init__(self, args, population, plan, run_dir, cards_dir):
        self.args = args
        self.population = population
        self.plan = plan
        self.run_dir = run_dir
        self.rng = random.Random(plan.seed ^ 0xA40)
        self.record = {"seed": plan.seed}
        self.clone_card_number = None
        taken = {plan.lost_person_index}
        if args.inject_double_spend:
            self._double_spend(taken)
        if args.inject_clone:
            self._clone(taken, cards_dir)
        self._hand_over_taps(taken - {plan.lost_person_index})
        self.taken = frozenset(taken)    # cardholders the injections use: nobody else acts for them

    # -- plan changes ------------------------------------------------------------------------------

    def _pick(self, taken, low_fen, high_fen):
        candidates = [i for i, p in enumerate(self.population)
                      if i not in taken and low_fen <= p["opening_fen"] <= high_fen]
        if not candidates:
            candidates = [i for i in range(len(self.population)) if i not in taken]
        index = self.rng.choice(candidates)
        taken.add(index)
        return index

    def _add_tap(self, at_s, terminal_index, person_index, amount_fen, card=None):
        tap = InjectedTap(len(self.plan.taps) + 1, at_s, terminal_index, person_index, amount_fen, card=card)
        self.plan.taps.append(tap)
        return tap

    def _double_spend(self, taken):
        plan = self.plan
        terminals = sorted({t.terminal_index for t in plan.taps} | set(plan.offline_windows))
        offline = sorted(plan.offline_windows)
        while len(offline) < 2:      # two windows must be offline together
            offline.append(next(i for i in terminals if i not in offline))
        first, second = offline[:2]
        start_s, end_s = plan.offline_windows.get(first, (0.2 * plan.duration_s, 0.45 * plan.duration_s))
        # long enough that the second tap still finds both windows offline when a loaded machine makes
        # the first one wait (the same card is at one window at a time): else the second window learns
        # the balance and refuses, and there is no double spend to find
        end_s = max(end_s, start_s + _DOUBLE_SPEND_WINDOW * plan.duration_s)
        plan.offline_windows[first] = plan.offline_windows[second] = (start_s, end_s)
        person = self._pick(taken, 600, 1500)
        opening_fen = self.population[person]["opening_fen"]
        amount_fen = max(10, int(opening_fen * _DOUBLE_SPEND_SHARE) // 10 * 10)
        assert amount_fen <= opening_fen < 2 * amount_fen
        self._add_tap(start_s + 0.15 * (end_s - start_s), first, person, amount_fen)
        self._add_tap(start_s + 0.3 * (end_s - start_s), second, person, amount_fen)
        self.record["double_spend"] = {"account_id": self.population[person]["account_id"],
                                       "opening_fen": opening_fen, "amount_fen": amount_fen,
                                       "terminal_indexes": [first, second]}

    def _clone(self, taken, cards_dir):
        plan = self.plan
        person = self._pick(taken, 5000, 10 ** 9)
        uid_hex = self.population[person]["uid"].hex()
        clone_dir = os.path.join(self.run_dir, "clones")
        os.makedirs(clone_dir, exist_ok=True)
        clone_path = os.path.join(clone_dir, "%s.card" % uid_hex)
        shutil.copyfile(os.path.join(cards_dir, "%s.card" % uid_hex), clone_path)
        terminals = sorted({t.terminal_index for t in plan.taps})
        online = [i for i in terminals if i not in plan.offline_windows] or terminals
        original_at = online[0]
        copy_at = next((i for i in terminals if i != original_at), original_at)
        at_s = 0.6 * plan.duration_s
        self._add_tap(at_s, original_at, person, 800)
        self._add_tap(at_s + 0.2, copy_at, person, 1200, card=clone_path)
        identity = self.population[person]["identity"]
        self.clone_card_number = identity.card_number
        self.record["clone"] = {"card_number": identity.card_number, "generation": identity.generation,
                                "account_id": identity.account_id, "terminal_indexes": [original_at, copy_at]}

    def _hand_over_taps(self, picked):
        """Planned taps of the picked cardholders go to a neighbour; injected taps stay."""
        people = len(self.population)
        for tap in self.plan.taps:
            if tap.person_index in picked and not isinstance(tap, InjectedTap):
                neighbour = tap.person_index
                while neighbour in picked or neighbour == self.plan.lost_person_index:
                    neighbour = (neighbour + 1) % people
                tap.person_index = neighbour
        self.plan.taps.sort(key=lambda tap: (tap.at_s, tap.tap_id))

    # -- after the rush ----------------------------------------------------------------------------

    def finish(self, server_dir, result, location, gateways=None):
        """Channel recharges and their statement; injected.json; the clone's own duplicate taps are
        reported apart from `duplicates` (they are the point, not a fault of the system)."""
        conn = dbmod.connect(location)
        try:
            self.record["day"] = day_text(day_of_ms(dbmod.now_ms()))
            if self.args.inject_statement_mismatch:
                self._statement(conn, server_dir, gateways)
            if self.clone_card_number is not None:
                repeated = conn.execute(
                    "SELECT count(*) - count(DISTINCT tap_counter) FROM terminal_records WHERE card_number = ?",
                    (self.clone_card_number,)).fetchone()[0]
                result["injected_clone_duplicates"] = repeated
                result["duplicates"] -= repeated
        finally:
            conn.close()
        result["injected"] = self.record
        with open(os.path.join(self.run_dir, "injected.json"), "w", encoding="utf-8") as handle:
            json.dump(self.record, handle, ensure_ascii=False, indent=2, sort_keys=True)

    def _statement(self, conn, server_dir, gateways):
        """Alipay recharges through the sandbox's signed notices (`gateways`: the demo's
        pay_gateways.PayGateways, installed in server_dir), and the channel's statement with one line
        one yuan off."""
        from sync_server import channels
        from sync_server.services import recharge
        handler = channels.load(channels.config_dir(server_dir))["alipay"]
        people = self.rng.sample(range(len(self.population)), STATEMENT_RECHARGES)
        lines = []
        for index in people:
            amount_fen = self.rng.randrange(10, 101) * 100
            order = recharge.create_order(conn, self.population[index]["account_id"], amount_fen, "alipay")
            delivery = gateways.notice(order, "paid")
            outcome, order = recharge.handle_notification(conn, "alipay", handler, delivery.headers, delivery.body)
            assert outcome == "credited", outcome
            lines.append([order["order_id"], order["channel_trade_no"], amount_fen, order["paid_ms"]])
        wrong = self.rng.randrange(len(lines))
        lines[wrong][2] += STATEMENT_MISMATCH_FEN
        path = os.path.join(self.run_dir, "statement-alipay-%s.csv" % self.record["day"])
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("商户订单号,交易号,金额(元),交易时间\n")
            for order_id, trade_no, amount_fen, paid_ms in lines:
                handle.write("%s,%s,%d.%02d,%d\n" % (order_id, trade_no, amount_fen // 100, amount_fen % 100, paid_ms))
        self.record["statement"] = {"channel": "alipay", "path": path, "mismatched_order": lines[wrong][0],
                                    "orders": [line[0] for line in lines]}
