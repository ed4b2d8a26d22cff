"""The main job end to end: `ykt demo --json` as a user runs it, on a small seeded campus.

Real parts throughout: the sync server under waitress on a SQLite file, POS terminals as separate
processes with their own SQLite journals, outages through the loopback relay, the loss report and the
top-ups through the cardholder API (a phone app) and signed channel notifications. A failing seed is
printed so the run can be replayed.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

SEED = int(os.environ.get("YKT_DEMO_SEED", "7"))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def watch_screens(port, seen, stop):
    """What POS 1's screens were told during the rush (`--face`): every state the page would get."""
    version = 0
    while not stop.is_set():
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/state?after=%d" % (port, version), timeout=30) as answer:
                state = json.loads(answer.read())
        except OSError:
            time.sleep(0.1)               # not up yet, or gone at the end
            continue
        version = state["version"]
        seen.append(state)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo run, with POS 1's screens up (`--face`) and watched as a browser would."""
    run_dir = tmp_path_factory.mktemp("demo")
    port, seen, stop = free_port(), [], threading.Event()
    watcher = threading.Thread(target=watch_screens, args=(port, seen, stop), daemon=True)
    watcher.start()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "ykt", "demo", "--seed", str(SEED), "--people", "400", "--terminals", "4",
             "--duration-s", "12", "--json", "--data-dir", str(run_dir / "run"), "--lang", "en",
             "--face", str(port)], capture_output=True, text=True, timeout=600)
    finally:
        stop.set()
        watcher.join(timeout=60)
    lines = completed.stdout.strip().splitlines()
    assert lines, "demo printed nothing (seed %d): %s" % (SEED, completed.stderr[-3000:])
    summary = json.loads(lines[-1])
    return completed, summary, run_dir / "run", seen


def test_demo_ends_with_one_json_line_holding_the_promised_fields(demo):
    completed, summary, _, _ = demo
    for field in ("taps", "accepted", "declined", "journaled", "on_server", "lost", "duplicates",
                  "ledger_imbalance_fen", "deny_enforced_after_s", "seed"):
        assert field in summary, field
    assert summary["seed"] == SEED
    assert "Lunch rush results" in completed.stderr     # the readable summary goes to stderr with --json


def test_nothing_lost_nothing_twice_ledger_balanced(demo):
    completed, summary, _, _ = demo
    assert completed.returncode == 0, "seed %d: %s" % (SEED, completed.stderr[-3000:])
    assert summary["journaled"] == summary["accepted"] > 0
    assert summary["on_server"] == summary["journaled"], "seed %d" % SEED
    assert summary["lost"] == 0 and summary["duplicates"] == 0 and summary["unexpected_on_server"] == 0
    assert summary["undecided"] == 0, "seed %d: a tap handed to a terminal was never decided" % SEED
    assert summary["ledger_imbalance_fen"] == 0 and summary["ledger_problems"] == []
    assert summary["merchant_credited_fen"] == summary["accepted_fen"]


def test_the_rush_really_had_outages_declines_and_an_enforced_loss(demo):
    _, summary, run_dir, _ = demo
    assert summary["offline_terminals"], "no terminal was cut off"
    assert summary["declined"].get("card_lost", 0) >= 1
    assert summary["deny_enforced_after_s"] is not None
    assert sum(summary["declined"].values()) + summary["accepted"] == summary["taps"]
    decisions = [json.loads(line) for line in open(run_dir / "decisions.jsonl", encoding="utf-8")]
    assert len(decisions) == summary["taps"]


def test_a_firmware_update_reached_part_of_the_fleet_mid_rush(demo):
    """POS 4 runs from A/B slots under the supervisor; 1.1.0 is rolled out to it mid-rush, it restarts
    between customers on the new version, is confirmed, and no tap is lost or stored twice."""
    _, summary, run_dir, _ = demo
    assert (summary["rollout_version"], summary["rollout_terminals"], summary["rollout_updated"],
            summary["rollout_rolled_back"]) == ("1.1.0", 1, 1, 0)
    [[_at_s, [pos_number]]] = summary["rollout_stages"]
    with open(run_dir / ("terminal-%d" % pos_number) / "slots" / "state.json", encoding="utf-8") as handle:
        state = json.load(handle)
    assert [(entry["event"], entry["version"]) for entry in state["history"]] == [
        ("installed", "1.0.0"), ("trial", "1.1.0"), ("confirmed", "1.1.0")]
    assert summary["lost"] == 0 and summary["duplicates"] == 0 and summary["unexpected_on_server"] == 0


def test_same_seed_same_plan():
    from simulators.lunch import make_plan

    first, second = make_plan(SEED, 400, 4, 12), make_plan(SEED, 400, 4, 12)
    assert [(t.at_s, t.person_index, t.amount_fen) for t in first.taps] == \
        [(t.at_s, t.person_index, t.amount_fen) for t in second.taps]
    assert first.offline_windows == second.offline_windows


def test_quick_repeat_taps_are_not_charged_without_the_cashier(demo):
    _, summary, _, _ = demo
    assert summary["repeat_taps_charged_without_confirmation"] == 0


def test_cardholders_use_the_app_recharges_credit_once(demo):
    """Top-ups go through the cardholder API and a channel whose notices come twice; the loss report
    is made from the app too (the deny test above only passes if it took effect)."""
    _, summary, _, _ = demo
    assert summary["app_recharges"] > 0 and summary["app_recharge_fen"] > 0
    assert summary["repeat_notifications"] >= summary["app_recharges"]
    assert summary["notifications_credited_twice"] == 0


def test_pos_1s_screens_showed_the_rush(demo):
    """`ykt demo --face`: a newcomer watching POS 1's screens sees the amounts, payments and refusals
    as they happen, and the demo still loses nothing."""
    completed, summary, _run, seen = demo
    assert "http://127.0.0.1:" in completed.stderr and "/cashier" in completed.stderr
    assert seen and {state["kind"] for state in seen} == {"pos"}
    assert any(state["amount_fen"] for state in seen)
    accepted = [state for state in seen if state["result"] and state["result"]["accepted"]]
    assert accepted and accepted[-1]["last_tap"]["seq"] >= 1
    assert [state["version"] for state in seen] == sorted(state["version"] for state in seen)
    assert summary["lost"] == 0 and summary["duplicates"] == 0


def test_face_options_that_cannot_work_are_refused(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        completed = subprocess.run([sys.executable, "-m", "ykt", "demo", "--face", str(busy.getsockname()[1]),
                                    "--data-dir", str(tmp_path / "run")], capture_output=True, text=True,
                                   timeout=60)
    assert completed.returncode == 2 and "已被占用" in completed.stderr and not (tmp_path / "run").exists()
    completed = subprocess.run([sys.executable, "-m", "ykt", "demo", "migrate", "--face", "--data-dir",
                                str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2 and "--face" in completed.stderr and not (tmp_path / "run").exists()


def test_impossible_options_get_a_clear_error_and_start_nothing(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "ykt", "demo", "--people", "5", "--data-dir",
                                str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2 and "--people" in completed.stderr and "20" in completed.stderr
    assert not (tmp_path / "run").exists()


def test_the_repeat_count_names_only_repeats_charged_inside_the_window():
    """The demo's verdict on unconfirmed repeats reads the terminal's own record times: a repeat within
    the window after a charged original is a fault; one reaching a busy till after the window, or after
    its original was declined, is a new purchase (counted apart)."""
    from simulators.fleet import _unconfirmed_repeats_charged
    window_ms = 3000
    stored = {(1, 1): {"time_ms": 10000}, (1, 2): {"time_ms": 12500}, (1, 3): {"time_ms": 20000},
              (1, 4): {"time_ms": 30000}}
    outcomes = {
        10: {"accepted": True, "terminal_id": 1, "seq": 1}, 11: {"accepted": True, "terminal_id": 1, "seq": 2},
        12: {"accepted": True, "terminal_id": 1, "seq": 3},                                  # 10 s later
        20: {"accepted": False, "terminal_id": 1, "seq": None}, 21: {"accepted": True, "terminal_id": 1, "seq": 4},
        22: {"accepted": False, "terminal_id": 1, "seq": None},                              # refused: fine
        23: {"accepted": True, "terminal_id": 1, "seq": 99},                                 # not on the server
    }
    assert _unconfirmed_repeats_charged(outcomes, {11: 10}, stored, window_ms) == (1, 0)
    assert _unconfirmed_repeats_charged(outcomes, {12: 10}, stored, window_ms) == (0, 1)
    assert _unconfirmed_repeats_charged(outcomes, {21: 20, 22: 10}, stored, window_ms) == (0, 1)
    assert _unconfirmed_repeats_charged(outcomes, {23: 10}, stored, window_ms) == (1, 0)


def test_phones_pay_by_code_replays_are_refused_and_a_stolen_phone_is_stopped(demo):
    """付款码 in the rush: holders pay by code (some phones offline), replayed screenshots are refused,
    the stolen phone's code is refused at every online window after the stop; every code sale a
    window accepted is on the server once (the reconcile above counts them with the card taps)."""
    _, summary, run_dir, _ = demo
    assert summary["paycode_accepted"] > 0 and summary["paycode_offline_phones"] > 0
    assert summary["paycode_replays_shown"] > 0 and summary["paycode_replays_accepted"] == 0
    assert summary["paycode_revoked_after_s"] is not None and summary["paycode_accepted_after_stop"] == 0
    decisions = [json.loads(line) for line in open(run_dir / "decisions.jsonl", encoding="utf-8")]
    code_sales = [line for line in decisions if line.get("paid_by") == "code" and line["accepted"]]
    assert len(code_sales) == summary["paycode_accepted"]
    assert summary["declined"].get("paycode_revoked", 0) >= 1
