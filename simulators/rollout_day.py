"""A firmware update in the demo (`ykt demo`): rolled out in stages to part of the fleet mid-rush.

Before the rush the site makes its release key and signs two bundles of this tree (tools/release.py):
1.0.0, which a third of the canteen POS terminals run from A/B slots under the supervisor (as a
flashed terminal's service unit runs it, firmware/apps/slots.py), and 1.1.0. During the rush:

    stage 1    at a quarter of the rush, 1.1.0 is rolled out to one terminal (`ykt fleet rollout
               --terminal`): at its next sync it downloads the bundle, checks the signature, installs
               it on trial, leaves between two orders, and the supervisor starts the new version
    stage 2    once that one is confirmed (it synced on the new version), the rest of the group

Taps keep coming while a terminal restarts: they wait in its input until the new version reads them
(a terminal never reads ahead of the line it runs). The demo's reconciliation then proves what
matters: no tap lost, none stored twice; this part adds that every updated terminal ends confirmed
on 1.1.0 with nothing rolled back.
"""
import os
import subprocess
import sys

from firmware.apps import bundles
from firmware.apps.slots import Slots
from sync_server import db as dbmod, registry, releases

OLD_VERSION = "1.0.0"
NEW_VERSION = "1.1.0"
MIN_FLEET = 3                         # fewer POS terminals: no third of the fleet to update
STAGE_ONE_AT = 0.25                  # share of the rush before the first terminal is offered the update
TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def available():
    """The release tool sits in the source tree (not in an installed package)."""
    return os.path.isfile(os.path.join(TOOLS_DIR, "release.py"))


def _release_tool(*args):
    done = subprocess.run([sys.executable, os.path.join(TOOLS_DIR, "release.py"), *args],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("tools/release.py %s: %s" % (args[0], done.stderr.strip()))
    return done.stdout


class RolloutDay:
    """The updated part of the fleet: which terminals run under slots, and the stages of the rollout."""

    def __init__(self, run_dir, location, master_key, documents, duration_s):
        self.location = location
        self.duration_s = duration_s
        self.dir = os.path.join(run_dir, "release")
        os.makedirs(self.dir, exist_ok=True)
        key_path = os.path.join(self.dir, "ykt-release.key")
        public = _release_tool("keygen", "--out", key_path).strip().split()[-1]
        self.bundles = {version: os.path.join(self.dir, "ykt-pos-%s.zip" % version)
                        for version in (OLD_VERSION, NEW_VERSION)}
        for version in self.bundles:
            _release_tool("build", "--kind", "pos", "--version", version, "--key", key_path, "--out", self.dir)
        # the last third of the windows run under slots (POS 1, whose screens the demo can show, stays put)
        self.group = list(range(len(documents) - max(1, len(documents) // 3), len(documents)))
        conn = dbmod.connect(location)
        try:
            releases.add_release_key(conn, public)
            # provisioned again, as a site does after adding its key: the files carry it
            for index in self.group:
                documents[index] = registry.provisioning_document(conn, master_key, documents[index]["terminal_id"],
                                                                  documents[index]["server_url"])
        finally:
            conn.close()
        self.documents = documents
        self.public = public
        self.release_id = None
        self.stages = []                 # (seconds into the rush, terminal indexes)
        self.slots = {}                  # terminal index -> Slots
        self._cleared = False

    def install(self, index, terminal_dir):
        """The terminal's first version in its slots (what tools/flash.py does); its supervisor's root."""
        slots = Slots(os.path.join(terminal_dir, "slots"))
        if slots.state() is None:
            slots.first_install(self.bundles[OLD_VERSION], "pos", bundles.public_keys([self.public]))
        self.slots[index] = slots
        return slots.root

    def run_due(self, now_s, fleet, progress, say):
        """Stage 1 at STAGE_ONE_AT of the rush, stage 2 once stage 1 is confirmed. A terminal takes
        its update between customers only: one whose last customer's payment was refused still shows
        the amount due, so when the rush is over its cashier clears the screen."""
        if not self._cleared and now_s >= self.duration_s:
            self._cleared = True
            for index in self.group:
                if not self.confirmed(index):
                    fleet[index].clear()
        if not self.stages and now_s >= self.duration_s * STAGE_ONE_AT:
            conn = dbmod.connect(self.location)
            try:
                self.release_id = releases.add_release(conn, self._server_dir(), self.bundles[NEW_VERSION])
                first = self.group[0]
                releases.add_rollout(conn, self.release_id, terminal_id=fleet[first].terminal_id)
            finally:
                conn.close()
            self.stages.append((now_s, [first]))
            progress.step(say("固件 %s 第一阶段：推送给 %d 号消费机" % (NEW_VERSION, first + 1),
                              "firmware %s, stage 1: offered to POS %d" % (NEW_VERSION, first + 1)))
        elif len(self.stages) == 1 and len(self.group) > 1 and self.confirmed(self.group[0]):
            rest = self.group[1:]
            conn = dbmod.connect(self.location)
            try:
                for index in rest:
                    releases.add_rollout(conn, self.release_id, terminal_id=fleet[index].terminal_id)
            finally:
                conn.close()
            self.stages.append((now_s, rest))
            progress.step(say("固件 %s 第二阶段：%d 号已确认，推送给 %s 号消费机"
                              % (NEW_VERSION, self.group[0] + 1, "、".join(str(i + 1) for i in rest)),
                              "firmware %s, stage 2: POS %d confirmed; offered to POS %s"
                              % (NEW_VERSION, self.group[0] + 1, ", ".join(str(i + 1) for i in rest))))

    def pending(self):
        """Still rolling out: the rush keeps going (up to its limit) until every stage is confirmed."""
        if not self.stages:
            return True
        return any(not self.confirmed(index) for index in self.group)

    def confirmed(self, index):
        state = self.slots[index].state()
        return state["version"] == NEW_VERSION and state["trial"] is None

    def _server_dir(self):
        return os.path.join(os.path.dirname(self.dir), "server")

    def summary(self):
        states = {index: self.slots[index].state() for index in self.group}
        rolled_back = sum(1 for state in states.values()
                          for entry in state["history"] if entry["event"] == "rolled_back")
        return {
            "rollout_version": NEW_VERSION,
            "rollout_terminals": len(self.group),
            "rollout_updated": sum(1 for index in self.group if self.confirmed(index)),
            "rollout_rolled_back": rolled_back,
            "rollout_stages": [[round(at_s, 1), [index + 1 for index in indexes]] for at_s, indexes in self.stages],
        }


def rollout_ok(summary):
    return "rollout_terminals" not in summary or (
        summary["rollout_updated"] == summary["rollout_terminals"] and summary["rollout_rolled_back"] == 0)

