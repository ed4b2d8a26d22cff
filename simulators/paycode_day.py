"""付款码 in the lunch rush: phones paying at the canteen windows by code, replayed screenshots, and a
phone stopped mid-rush.

Some cardholders have the payment code on their phones (their own Ed25519 key, certified by the
server at the start) and pay part of their lunches by showing it; the window's `ykt terminal` gets
the code as its scanner would type it. A third of those phones have no network: they make their
codes from the credential alone and, after paying, the holder presses 刷新 (the counter moves on);
the others learn of the payment from the server (`/paycode/.../uses`) like the app does.

Someone photographs codes over shoulders and shows the photo again shortly after: at the same window,
or at another window while both are online. Such a replay must never be accepted
(`paycode_replays_accepted` = 0): the window's replay cache or the server's claim refuses it. (A code
shown at two windows that are both offline cannot be refused at once; the certificate's offline cap
bounds it and the day close reports it - tests/test_paycode.py proves that part.)

Mid-rush one holder's phone is stolen and the holder stops the code from another phone; the thief
keeps paying with it at every online window until each has refused it. `paycode_revoked_after_s` is
the seconds from the stop to the last of those refusals.
"""
import queue
import random
import threading

from simulators.phone import PhoneApp
from simulators.phone_paycode import PayCodeWallet
from sync_server import db as dbmod, paycode, pin_rules

PAYERS = 24
OFFLINE_PHONE_SHARE = 3                # one payer in three has no network on the phone
CODE_TAP_SHARE = 0.6                   # of a payer's lunches, those paid by code
REPLAY_SHARE = 0.3                     # of the accepted codes, those photographed and shown again
REPLAY_DELAY_S = (0.3, 4.0)
REVOKE_AT = 0.5                        # share of the rush when the stolen phone is stopped
THIEF_INTERVAL_S = 0.3
STEADY_ONLINE_S = 3.0                  # a window back online this long has synced (1 s interval) again
MIN_OPENING_FEN = 3000
MAX_QUEUED_ASKS = 256                  # the apps' polls waiting for their thread (bounded: dropped beyond)
ASK_JOIN_TIMEOUT_S = 30


class PayCodeDay:
    def __init__(self, location, master_key, server_url, population, plan, exclude=()):
        self.rng = random.Random(plan.seed ^ 0xC0DE)
        self.plan = plan
        self.repeated = {tap.repeat_of for tap in plan.taps if tap.repeat_of}
        self.population = population
        self.server_url = server_url
        candidates = [index for index, person in enumerate(population)
                      if person.get("opening_fen", 0) >= MIN_OPENING_FEN and index != plan.lost_person_index
                      and index not in exclude]
        chosen = self.rng.sample(candidates, min(PAYERS, len(candidates)))
        self.wallets = {}
        self.offline_phones = set(chosen[::OFFLINE_PHONE_SHARE])
        conn = dbmod.connect(location)
        try:
            for index in chosen:
                wallet = PayCodeWallet.create()
                with dbmod.transaction(conn):
                    answer = paycode.enable(conn, master_key, population[index]["account_id"], None,
                                            wallet.public_key, dbmod.now_ms())
                wallet.certificate, wallet.credential_id = answer["certificate"], answer["credential_id"]
                wallet.expiry_ms = answer["expiry_ms"]
                self.wallets[index] = wallet
        finally:
            conn.close()
        online = sorted(set(chosen) - self.offline_phones)
        # the online phones' apps are bound before the rush (binding checks the PIN: scrypt)
        self.apps = {index: self._bind(index) for index in online}
        self._asks = queue.Queue(maxsize=MAX_QUEUED_ASKS)
        self.uses_seen = 0
        self.ask_errors = []
        self._asker = threading.Thread(target=self._ask_uses, name="paycode-apps", daemon=True)
        self._asker.start()
        self.stolen = online[0] if online else None
        self.revoke_at_s = REVOKE_AT * plan.duration_s
        self.revoked_s = None
        self.online_at_revocation = set()
        self.first_refusal_s = {}      # terminal index -> seconds after the stop
        self.code_taps = {}            # tap_id -> (person_index, use key) of codes shown by their holders
        self.replays = []              # (due_s, person_index, code text, terminal index) still to show
        self.replay_taps = set()
        self.thief_taps = set()
        self.accepted = 0
        self.replays_shown = 0
        self.replays_accepted = 0
        self.thief_accepted = 0
        self.thief_accepted_offline = 0
        self._next_thief_s = 0.0
        self._cursor = 0

    # -- the rush asks ---------------------------------------------------------------------------------

    def pays_by_code(self, tap):
        """Whether this planned lunch is paid by code (the holder's phone, not yet stolen)."""
        person = tap.person_index
        if person not in self.wallets or tap.probe or tap.repeat_of or tap.pull_after_ops or \
                tap.tap_id in self.repeated:
            return False        # a quick double tap is the card's: the cashier's repeat check is on cards
        if person == self.stolen and self.revoked_s is not None:
            return False
        return self.rng.random() < CODE_TAP_SHARE

    def code_line(self, tap):
        wallet = self.wallets[tap.person_index]
        text = wallet.code()
        self.code_taps[tap.tap_id] = (tap.person_index, text)
        return {"tap_id": tap.tap_id, "amount_fen": tap.amount_fen, "code": text}

    def decided(self, tap_id, line, now_s, terminal_index, steady):
        """A decision of a code line came back (`steady`: terminal indexes online for a while)."""
        if tap_id in self.replay_taps:
            self.replays_accepted += 1 if line["accepted"] else 0
            return
        if tap_id in self.thief_taps:
            if line["accepted"]:
                # at a window online all along a stopped code is never taken; one that was cut off in
                # between took it within the certificate's offline cap (counted apart)
                if terminal_index in steady:
                    self.thief_accepted += 1
                else:
                    self.thief_accepted_offline += 1
                    self.online_at_revocation.discard(terminal_index)
            elif terminal_index not in self.first_refusal_s:
                self.first_refusal_s[terminal_index] = now_s - self.revoked_s
            return
        person, text = self.code_taps.get(tap_id, (None, None))
        if person is None or not line["accepted"]:
            return
        self.accepted += 1
        wallet = self.wallets[person]
        # the holder sees the till accept it and the phone moves to the next code: offline by the
        # holder's 刷新; online the app also asks the server (`/uses`: 支付成功), off the rush's thread
        # so a slow answer never holds up the windows' queues
        wallet.used()
        if person not in self.offline_phones:
            try:
                self._asks.put_nowait(person)
            except queue.Full:
                pass                            # the app asks again at its next poll
        if self.rng.random() < REPLAY_SHARE and text is not None:
            same = self.rng.random() < 0.5 or len(steady) < 2
            target = terminal_index if same else self.rng.choice(sorted(steady - {terminal_index}) or [terminal_index])
            if same or terminal_index in steady:
                self.replays.append((now_s + self.rng.uniform(*REPLAY_DELAY_S), person, text, target))

    def cut_off(self, terminal_index):
        """A window lost its network before refusing the stolen phone: not an online one for the measure."""
        if terminal_index not in self.first_refusal_s:
            self.online_at_revocation.discard(terminal_index)

    def due(self, now_s, steady, all_terminals, next_tap_id, busy):
        """Lines to send now: replays that are due, the thief's attempts. [(tap_id, terminal index, line)]."""
        lines = []
        if self.stolen is not None and self.revoked_s is None and now_s >= self.revoke_at_s:
            self._revoke(now_s, steady)
        keep = []
        for replay in sorted(self.replays):
            due_s, person, text, target = replay
            if due_s > now_s:
                keep.append(replay)
                continue
            if target not in steady and target not in all_terminals:
                continue
            tap_id = next_tap_id + len(lines)
            self.replay_taps.add(tap_id)
            self.replays_shown += 1
            lines.append((tap_id, target, {"tap_id": tap_id, "amount_fen": 500 + tap_id % 50 * 10, "code": text}))
        self.replays = keep
        if self.revoked_s is not None and now_s >= self._next_thief_s and self.stolen not in busy:
            waiting = sorted(self.online_at_revocation - set(self.first_refusal_s))
            if waiting:
                target = waiting[self._cursor % len(waiting)]
                self._cursor += 1
                wallet = self.wallets[self.stolen]
                wallet.used()                 # a fresh code each try: only the stop can refuse it
                tap_id = next_tap_id + len(lines)
                self.thief_taps.add(tap_id)
                lines.append((tap_id, target, {"tap_id": tap_id, "amount_fen": 600, "code": wallet.code()}))
                self._next_thief_s = now_s + THIEF_INTERVAL_S
        return lines

    def probing(self):
        return self.revoked_s is not None and set(self.first_refusal_s) < self.online_at_revocation or \
            bool(self.replays)

    def _ask_uses(self):
        """The online phones' apps polling `/uses` after a payment (a thread of their own)."""
        while True:
            person = self._asks.get()
            if person is None:
                return
            try:
                self.wallets[person].refresh(self.apps[person])
                self.uses_seen += 1
            except Exception as error:      # an app that cannot reach the server shows the code anyway
                self.ask_errors.append("%s: %s" % (type(error).__name__, error))

    def _revoke(self, now_s, steady):
        """The holder stops the code on the stolen phone from another phone of theirs."""
        app = self.apps[self.stolen]
        app.paycode_stop(self.wallets[self.stolen].credential_id)
        self.revoked_s = now_s
        self.online_at_revocation = set(steady)

    def _bind(self, person_index):
        person = self.population[person_index]
        app = PhoneApp(self.server_url, "app-code-%d" % person["person_id"])
        app.bind(person["name"], person["staff_number"], pin_rules.initial_pin(None, person["staff_number"]))
        return app

    def close(self):
        self._asks.put(None)
        self._asker.join(ASK_JOIN_TIMEOUT_S)
        for app in self.apps.values():
            app.close()

    def summary(self):
        refusals = [self.first_refusal_s[index] for index in self.online_at_revocation if index in self.first_refusal_s]
        complete = self.revoked_s is not None and len(refusals) == len(self.online_at_revocation) and refusals
        return {"paycode_payers": len(self.wallets), "paycode_offline_phones": len(self.offline_phones),
                "paycode_accepted": self.accepted, "paycode_replays_shown": self.replays_shown,
                "paycode_replays_accepted": self.replays_accepted,
                "paycode_revoked_after_s": round(max(refusals), 3) if complete else None,
                "paycode_accepted_after_stop": self.thief_accepted,
                "paycode_accepted_after_stop_offline": self.thief_accepted_offline}


def paycode_ok(summary):
    return summary.get("paycode_replays_accepted", 0) == 0 and summary.get("paycode_accepted_after_stop", 0) == 0 \
        and (summary.get("paycode_payers", 0) == 0 or summary.get("paycode_revoked_after_s") is not None)
