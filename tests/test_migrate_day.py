"""`ykt demo migrate` end to end, small: old cards made, the export imported by the hall's command, units
as `ykt activation` processes through the outage relay (one cut off for a while), cards pulled early,
the hall's afternoon; its JSON line says every card was credited what it held, nothing twice."""
import json
import subprocess
import sys


def test_the_go_live_morning_moves_every_card_once_and_conserves_the_money(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ykt", "demo", "migrate", "--people", "150", "--terminals", "3",
                           "--seed", "4", "--data-dir", str(tmp_path / "demo"), "--json", "--lang", "en"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["conservation_ok"] and summary["moved_twice"] == 0
    assert summary["credited_wrong"] == 0 and summary["unacked_after_drain"] == 0
    assert summary["cards_tapped"] == 150 and summary["activated"] > 120
    assert summary["pulled_early"] > 0 and summary["finished_by_a_later_tap"] > 0
    assert summary["refused"].get("activation_refused", 0) > 0            # lost and shared-number cards
    assert summary["old_fen"] == summary["moved_fen"] + summary["outstanding_fen"]
    assert summary["activation_p95_ms"] is not None and summary["voice_prompts_spoken"] >= 2
    assert "Go-live morning" in done.stderr
    decisions = (tmp_path / "demo" / "decisions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(decisions) >= 150
