"""A seeded canteen lunch rush: who taps where, when, for how much, and what goes wrong.

Pure and deterministic: the same seed gives the same schedule, so a failing demo or test run is
replayed by passing its seed again. Times are seconds from the start of the rush.
"""
import random

DISH_PRICES_FEN = (350, 600, 800, 1000, 1200, 1500, 1800)


class Tap:
    __slots__ = ("tap_id", "at_s", "terminal_index", "person_index", "amount_fen", "pull_after_ops",
                 "repeat_of", "cashier_confirms", "probe")

    def __init__(self, tap_id, at_s, terminal_index, person_index, amount_fen, pull_after_ops=None,
                 repeat_of=None, cashier_confirms=False, probe=False):
        self.tap_id = tap_id
        self.at_s = at_s
        self.terminal_index = terminal_index
        self.person_index = person_index
        self.amount_fen = amount_fen
        self.pull_after_ops = pull_after_ops      # card pulled after this many card operations
        self.repeat_of = repeat_of                # tap_id this one repeats (quick double tap)
        self.cashier_confirms = cashier_confirms  # cashier answers the repeat-tap question
        self.probe = probe                        # the lost card tried after the loss report


class Plan:
    def __init__(self, seed, taps, offline_windows, loss_at_s, lost_person_index, duration_s):
        self.seed = seed
        self.taps = taps                          # sorted by at_s; probes are generated live
        self.offline_windows = offline_windows    # {terminal_index: (start_s, end_s)}
        self.loss_at_s = loss_at_s
        self.lost_person_index = lost_person_index
        self.duration_s = duration_s


def make_plan(seed, people, terminals, duration_s, taps_per_person=1.1, offline_terminals=2,
              pulled_ratio=0.01, repeat_ratio=0.02):
    assert people > 10 and terminals >= 2 and duration_s > 0
    rng = random.Random(seed)
    taps = []
    count = int(people * taps_per_person)
    # Lunch peaks in the middle: a triangular arrival curve over the rush.
    for _ in range(count):
        person = rng.randrange(people)
        at_s = rng.triangular(0.0, duration_s * 0.95, duration_s * 0.45)
        taps.append([at_s, person])
    taps.sort()
    # A person stays at one window per visit; windows are picked by habit (person index).
    plan_taps = []
    busy_until = {}
    for at_s, person in taps:
        at_s = max(at_s, busy_until.get(person, 0.0))
        busy_until[person] = at_s + 2.0
        terminal = (person * 7 + rng.randrange(2)) % terminals
        amount = rng.choice(DISH_PRICES_FEN) + rng.choice((0, 0, 0, 50, 200))
        tap = Tap(len(plan_taps) + 1, at_s, terminal, person, amount)
        roll = rng.random()
        if roll < pulled_ratio:
            # Anywhere in the tap: while reading (nothing done yet) or while counting on the card (the
            # card may be counted with no record: a torn tap the nightly close lists, nothing charged).
            tap.pull_after_ops = rng.randrange(1, 10)   # a tap is 9 card commands (poll included)
        plan_taps.append(tap)
        if pulled_ratio <= roll < pulled_ratio + repeat_ratio:
            # The same card again within a second: the cashier is asked; mostly says no.
            plan_taps.append(Tap(len(plan_taps) + 1, at_s + 0.3, terminal, person, amount,
                                 repeat_of=tap.tap_id, cashier_confirms=rng.random() < 0.2))
    plan_taps.sort(key=lambda tap: (tap.at_s, tap.tap_id))
    offline_indexes = rng.sample(range(terminals), min(offline_terminals, terminals - 1))
    offline_windows = {}
    for index in offline_indexes:
        start_s = rng.uniform(0.15, 0.3) * duration_s
        offline_windows[index] = (start_s, start_s + rng.uniform(0.2, 0.3) * duration_s)
    loss_at_s = 0.4 * duration_s
    lost_person = rng.randrange(people)
    return Plan(seed, plan_taps, offline_windows, loss_at_s, lost_person, duration_s)
