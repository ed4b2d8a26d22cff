"""What every terminal shell does around its journal besides its own trade: the background sync
thread, a sync in the foreground, draining the journal at the end, scripted input, JSON-line output.

The canteen POS (pos_terminal.py) and the water dispenser (dispenser_terminal.py) mix this in. A shell
sets, before using it: `store` (its TerminalStore), `sync_client` (a SyncClient or None),
`_sync_store` (the sync thread's own store), `sync_interval_ms`, `_stop` and `_wake` (threading
Events), `_sync_thread` (None), `out` and `_out_lock`; and it provides `_refresh_config()` and
`run_line(line)`.
"""
import json
import threading
import time


class SyncedShell:
    display = True

    # -- background sync -----------------------------------------------------------------------

    def start_sync(self):
        if self.sync_client is None or self._sync_thread is not None:
            return
        self._sync_thread = threading.Thread(
            target=self.sync_client.run, name="ykt-sync",
            args=(self._stop, self.sync_interval_ms, self._on_sync, self._wake), daemon=True)
        self._sync_thread.start()

    def _on_sync(self, result):
        self.emit({"type": "sync", "online": result.online, "sent": result.sent, "acked_seq": result.acked_seq,
                   "error": result.error}, always=False)

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
        for raw in stream:
            raw = raw.strip()
            if not raw or raw.startswith("#"):
                continue
            self.run_line(json.loads(raw))

    def emit(self, line, always=True):
        if not always and not self.display:
            return
        text = json.dumps(line, ensure_ascii=False, sort_keys=True)
        with self._out_lock:
            self.out.write(text + "\n")
            self.out.flush()
