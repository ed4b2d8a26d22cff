"""A virtual RF field: the space in front of a reader where a card may or may not be.

Tests and simulations place and pull cards at any moment, from any thread. Every command a reader
sends to the card goes through `operate`, which numbers it and runs hooks just before and just after
it takes effect, so a test can pull the card at the exact point it wants to prove something about:

    field.pull_after(2, done=False)   the 2nd command from now never reaches the card
    field.pull_after(2, done=True)    the 2nd command takes effect, but its answer is lost

Either way the reader sees `CardGone`. Pulling a card powers it off (it forgets its authentication
and transfer buffer); placing it again needs a new poll, as with a real card.

Limits: one card at a time (placing a card takes out the one already there); no RF timing.
"""
import threading

from reader_drivers.base import CardGone, Target

BEFORE = "before"
AFTER = "after"
_MAX_HOOKS = 16


class VirtualField:
    def __init__(self):
        # Re-entrant, so a hook running inside `operate` may call place() or pull().
        self._condition = threading.Condition(threading.RLock())
        self._card = None
        self._hooks = []
        self.operation_count = 0

    @property
    def card(self):
        return self._card

    def place(self, card):
        with self._condition:
            if self._card is not None and self._card is not card:
                self._card.power_off()
            self._card = card
            card.power_off()
            self._condition.notify_all()

    def pull(self):
        """Take the card out of the field; returns it (or None if the field was empty)."""
        with self._condition:
            card, self._card = self._card, None
            if card is not None:
                card.power_off()
            return card

    def on_operation(self, hook):
        """hook(field, number, name, phase) runs before and after each card command (phase BEFORE or
        AFTER; AFTER only when the command succeeded). Returns a function that removes the hook."""
        with self._condition:
            assert len(self._hooks) < _MAX_HOOKS, "too many field hooks"
            self._hooks.append(hook)

        def remove():
            with self._condition:
                if hook in self._hooks:
                    self._hooks.remove(hook)
        return remove

    def pull_after(self, operations, done=True):
        """Pull the card at the `operations`-th card command from now: after it took effect (done,
        the answer is lost) or before it reaches the card (not done)."""
        assert operations >= 1
        with self._condition:
            target_number = self.operation_count + operations
        phase_wanted = AFTER if done else BEFORE
        remove = None

        def hook(field, number, name, phase):
            if number == target_number and phase == phase_wanted:
                field.pull()
                remove()
            elif number > target_number:
                remove()   # the command failed before its AFTER phase: nothing left to do
        remove = self.on_operation(hook)
        return remove

    def poll(self, timeout_ms):
        """Wait up to timeout_ms for a card, select it, and return its Target (or None)."""
        assert timeout_ms >= 0
        with self._condition:
            if self._card is None and timeout_ms > 0:
                self._condition.wait_for(lambda: self._card is not None, timeout_ms / 1000.0)
            if self._card is None:
                return None
            uid, atqa, sak = self._card.select()
            return Target(uid, atqa, sak)

    def halt(self):
        with self._condition:
            if self._card is not None:
                self._card.halt()

    def operate(self, name, *arguments):
        """Send one command to the card in the field; CardGone if there is none or it leaves."""
        with self._condition:
            card = self._card
            if card is None:
                raise CardGone("感应区内没有卡片 / no card in the field")
            self.operation_count += 1
            number = self.operation_count
            self._run_hooks(number, name, BEFORE)
            if self._card is not card:
                raise CardGone("卡片已移开 / the card left before %s" % name)
            result = getattr(card, name)(*arguments)
            self._run_hooks(number, name, AFTER)
            if self._card is not card:
                raise CardGone("卡片已移开，结果未知 / the card left after %s: its answer was lost" % name)
            return result

    def _run_hooks(self, number, name, phase):
        for hook in list(self._hooks):
            hook(self, number, name, phase)
