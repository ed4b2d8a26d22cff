"""Durable before shown, checked at the system-call level with strace.

SIGKILL cannot tell a journal that reached the disk from one still in the page cache; a power cut
can. So this test watches the real `ykt terminal` process under strace and checks the order of its
system calls: before each accepted decision line is written to stdout, the journal's WAL file must
have been fsync'ed (SQLite WAL with synchronous=FULL syncs the WAL at every commit) after the previous
decision. If the terminal printed success first, or ran with synchronous=NORMAL/OFF, this fails.
"""
import json
import os
import re
import shutil
import subprocess
import sys

from test_pos_terminal import issue_card_image, provisioning, seed_cache

_SYNC = re.compile(r"^(?P<pid>\d+)\s+(?:\d+:\d+:\d+\.\d+\s+)?(?:fsync|fdatasync)\((?P<fd>\d+)<(?P<path>[^>]*)>\)\s+=\s+0")
_WRITE = re.compile(r'^(?P<pid>\d+)\s+(?:\d+:\d+:\d+\.\d+\s+)?write\(1<[^>]*>, "(?P<data>.*)"')


def test_every_accepted_tap_is_fsynced_before_it_is_shown(tmp_path):
    strace = shutil.which("strace")
    assert strace, "strace is missing: `make test` installs it (Debian package strace)"
    data_dir = tmp_path / "terminal"
    data_dir.mkdir()
    card_path = issue_card_image(tmp_path)
    seed_cache(data_dir)
    provision_path = tmp_path / "provision.json"
    provision_path.write_text(json.dumps(provisioning()))
    taps = [{"amount_fen": 100 + index, "card": card_path} for index in range(6)]
    trace_path = tmp_path / "trace.txt"
    completed = subprocess.run(
        [strace, "-f", "-y", "-s", "4096", "-e", "trace=fsync,fdatasync,write", "-o", str(trace_path),
         sys.executable, "-m", "ykt", "terminal", "--provision", str(provision_path), "--data-dir", str(data_dir),
         "--reader", "sim:", "--script", "-", "--decisions-only", "--no-sync"],
        input="".join(json.dumps(tap) + "\n" for tap in taps), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    accepted_shown = [json.loads(line) for line in completed.stdout.splitlines()
                      if json.loads(line).get("accepted")]
    assert len(accepted_shown) == len(taps), "every tap should be accepted: %s" % completed.stdout

    wal = os.path.join(str(data_dir), "terminal.db-wal")
    synced_since_last_shown = False
    shown = 0
    for line in trace_path.read_text().splitlines():
        sync = _SYNC.match(line)
        if sync and os.path.realpath(sync.group("path")) == os.path.realpath(wal):
            synced_since_last_shown = True
            continue
        write = _WRITE.match(line)
        if write and '\\"accepted\\": true' in write.group("data"):
            assert synced_since_last_shown, "decision %d was shown before its journal reached the disk" % (shown + 1)
            synced_since_last_shown = False
            shown += 1
    assert shown == len(taps), "strace saw %d accepted decision writes, expected %d" % (shown, len(taps))
