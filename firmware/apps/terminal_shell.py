"""What every terminal shell does around its journal besides its own trade: the background sync
thread, a sync in the foreground, draining the journal at the end, scripted input, JSON-line output
(which also feeds the screens, when the shell has a face), and the threads that move a device's
input onto the counter's bounded queue.

The canteen POS (pos_terminal.py) and the water dispenser (dispenser_terminal.py) mix this in. A shell
sets `provisioning`, `terminal_id`, `sam`, `store` (its TerminalStore), `clock` and `out`, then calls
`_open_sync` (the sync client, its thread's events, the output lock); and it provides
`_refresh_config()` and `run_line(line)`.
"""
import contextlib
import json
import os
import queue
import sys
import threading
import time

from firmware.apps import bundles, slots, systemd_notify
from firmware.apps.slots import SLOTS_ROOT_ENV, TRIAL_ENV, mark_synced


@contextlib.contextmanager
def scripted_card(slot, path, pull_after=None, pull_done=True, owner=None):
    """A card image in the terminal's card slot for one scripted tap (pull_after: the card leaves at
    that card command, pull_done: after it took effect). The image is saved after each command that
    changes the card, like a card's EEPROM, so a terminal killed mid-tap never leaves it behind the
    card; the card is pulled at the end, and a pull the tap never reached does not hit the next one."""
    if slot is None:
        raise ValueError("脚本中的卡片映像需要模拟读卡器 / scripted card images need a card slot "
                         "(sim: reader or an emulator); %r has none" % (owner,))
    from reader_drivers.sim.card_file import write_through  # only scripted taps need the card model
    from reader_drivers.sim.classic_card import ClassicCard
    card = ClassicCard.load(path)
    stop_write_through = write_through(slot, card, path)
    slot.place(card)
    cancel_pull = slot.pull_after(int(pull_after), done=bool(pull_done)) if pull_after else None
    try:
        yield card
    finally:
        if cancel_pull is not None:
            cancel_pull()
        slot.pull()
        stop_write_through()


def card_path(cards_dir, card):
    """A scripted "card": an image path, or a UID whose image is <cards_dir>/<uid>.card."""
    if os.path.exists(card):
        return card
    return os.path.join(cards_dir, "%s.card" % card.lower())


def pump(read, inputs, stop, name):
    """A thread moving what `read()` returns (None: nothing yet) onto the bounded `inputs` queue
    until `stop`; a device that fails stops its thread with one line on stderr."""
    def run():
        while not stop.is_set():
            try:
                item = read()
            except Exception as error:       # the device is gone: the counter goes on without it
                print("输入设备已停止 / the %s stopped: %s" % (name, error), file=sys.stderr)
                return
            if item is None:
                continue
            try:
                inputs.put(item, timeout=1.0)
            except queue.Full:
                print("输入过多，已丢弃一个 / the counter is behind; one %s input dropped" % name, file=sys.stderr)

    thread = threading.Thread(target=run, name="ykt-%s" % name, daemon=True)
    thread.start()
    return thread


# what a configured interval may be; outside it the shell's default holds (a bad value must not stop sync)
MIN_SYNC_INTERVAL_MS = 200
MAX_SYNC_INTERVAL_MS = 3600 * 1000


class SyncedShell:
    display = True
    face = None         # firmware.apps.face.Face: the screens, fed every line emitted (display or not)

    def _open_sync(self, db_path, server_url, sync, sync_interval_ms, default_interval_ms, **client_options):
        """The output lock, the sync thread's events, and the sync client on a store connection of
        its own (SQLite serialises the two writers) when `sync` and a server URL (the argument, else
        the provisioning file's) are given; its interval: the argument, else the server's
        configuration, else `default_interval_ms`."""
        from firmware.apps.store import TerminalStore
        from firmware.apps.sync_client import SyncClient
        self._out_lock = threading.Lock()
        self._heartbeat = systemd_notify.Notifier()
        self._data_dir = os.path.dirname(os.path.abspath(db_path))
        self._updates_refused = set()      # versions whose bundle was refused: not fetched again
        self.restart_wanted = threading.Event()    # an update is installed: stop when idle
        if self.face is not None:           # what an earlier run journaled and never uploaded
            self.face.set(backlog=self.store.unacked_count())
        self.sync_client = None
        self._sync_thread = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        url = server_url or self.provisioning.get("server_url")
        if sync and url:
            self._sync_store = TerminalStore(db_path)
            self.sync_client = SyncClient(self._sync_store, self.sam, self.terminal_id, url, self.clock,
                                          key_version=self.provisioning.get("key_version", 1),
                                          data_dir=self._data_dir, **client_options)
            self._interval_asked_ms = sync_interval_ms
            self._default_interval_ms = default_interval_ms

    # -- background sync -----------------------------------------------------------------------

    def start_sync(self):
        if self.sync_client is None or self._sync_thread is not None:
            return
        self._sync_thread = threading.Thread(
            target=self.sync_client.run, name="ykt-sync",
            args=(self._stop, self.sync_interval_ms, self._on_sync, self._wake), daemon=True)
        self._sync_thread.start()

    def sync_interval_ms(self):
        """Between syncs: the command line's, else the server's configuration as it is now (the admin
        console sets it per terminal; read on the sync thread's own connection before each wait), else
        the shell's default."""
        if self._interval_asked_ms:
            return self._interval_asked_ms
        configured = self._sync_store.config().get("sync_interval_ms")
        if type(configured) is int and MIN_SYNC_INTERVAL_MS <= configured <= MAX_SYNC_INTERVAL_MS:
            return configured
        return self._default_interval_ms

    def _on_sync(self, result):
        if result.online:
            mark_synced()
            if self.sync_client is not None and self.sync_client.update_offer is not None:
                self._take_update(self.sync_client.update_offer)
        # unacked: the offline backlog, counted on the sync thread's own connection
        self.emit({"type": "sync", "online": result.online, "sent": result.sent, "acked_seq": result.acked_seq,
                   "error": result.error, "unacked": self._sync_store.unacked_count()}, always=False)

    def _take_update(self, offer):
        """A firmware update the server offers (on the sync thread): fetched, checked against the
        provisioning file's release keys and put in the inactive slot on trial (firmware/apps/slots.py);
        then the shell is asked to stop once idle, and the supervisor starts the new version. Without
        slots (a development run) or after a refusal of that version, nothing happens."""
        self.sync_client.update_offer = None
        root = os.environ.get(SLOTS_ROOT_ENV)
        if not root or offer["version"] in self._updates_refused:
            return
        path = os.path.join(self._data_dir, "incoming-firmware.zip")
        try:
            self.sync_client.fetch_release(offer["release_id"], path)
            slots.Slots(root).install(path, bundles.public_keys(self.provisioning.get("release_keys") or []),
                                      int(os.environ.get(TRIAL_ENV, slots.DEFAULT_TRIAL_S)))
        except bundles.BundleRefused as error:
            self._updates_refused.add(offer["version"])
            self.emit({"type": "update", "version": offer["version"], "installed": False, "error": str(error)})
            return
        except Exception as error:       # the network or the disk: tried again at the next offer
            self.emit({"type": "update", "version": offer["version"], "installed": False, "error": str(error)})
            return
        finally:
            if os.path.exists(path):
                os.remove(path)
        self.emit({"type": "update", "version": offer["version"], "installed": True})
        self.restart_wanted.set()

    def idle_for_update(self):
        """Between customers: nothing under way that a restart would cut (each shell says)."""
        raise NotImplementedError

    def alive(self):
        """The serve loop went round: WATCHDOG=1 to whoever supervises the terminal (the slots'
        supervisor, which stops a terminal silent for --hang-s; at most one datagram per half of that).
        Nothing without a supervisor."""
        self._heartbeat.alive()

    def leaving_for_update(self):
        """True once an installed update waits and the terminal is between customers: its serve loop
        ends there, and the supervisor (firmware/apps/slots.py) starts the new version. Every serve
        loop asks this as it goes round, so it is also where the terminal says it is alive."""
        self.alive()
        if not self.restart_wanted.is_set() or not self.idle_for_update():
            return False
        self.emit({"type": "restart", "why": "firmware update installed"})
        return True

    def sync_now(self):
        """Sync in the foreground (scripted {"sync": true}); returns the SyncResult or None."""
        if self.sync_client is None:
            return None
        result = self.sync_client.sync_until_settled()
        self._on_sync(result)
        self._refresh_config()
        return result

    def drain(self, timeout_s):
        """Sync until the journal holds nothing unacknowledged or timeout_s passes; returns unacked."""
        deadline = time.monotonic() + timeout_s
        while self.store.unacked_count() and time.monotonic() < deadline and self.sync_client is not None:
            self.alive()
            result = self.sync_client.sync_until_settled()
            if not result.online:
                time.sleep(min(1.0, self.sync_client.backoff_ms(200) / 1000.0))
        unacked = self.store.unacked_count()
        self.emit({"type": "drained", "unacked": unacked, "last_seq": self.store.last_seq()}, always=True)
        return unacked

    def stop_sync(self, *threads):
        """Stop the sync thread (and these other threads of the shell), then close the stores."""
        self._stop.set()
        self._wake.set()
        for thread in (self._sync_thread,) + threads:
            if thread is not None:
                thread.join(timeout=30)
        if self.sync_client is not None:
            self.sync_client.close()
            self._sync_store.close()

    # -- scripts and output --------------------------------------------------------------------

    def run_script(self, stream):
        """Run JSON lines until the stream ends, or until an installed update is waiting and the
        terminal is between customers (the rest of the stream is for the new version)."""
        for raw in stream:
            raw = raw.strip()
            if not raw or raw.startswith("#"):
                continue
            self.run_line(json.loads(raw))
            if self.leaving_for_update():
                return

    def emit(self, line, always=True):
        if self.face is not None:
            self.face.observe(line)
        if not always and not self.display:
            return
        text = json.dumps(line, ensure_ascii=False, sort_keys=True)
        with self._out_lock:
            self.out.write(text + "\n")
            self.out.flush()
