"""benchmarks/activation.py runs end to end and prints its one JSON line (no time is asserted).

A small run: every tap must be accepted as "activated" by the real activation unit's shell on the
pn532: driver over the emulator's pseudo-terminal, or the script exits non-zero; then the same card
steps run alone on fresh cards. The voice part runs when Debian's espeak-ng is there (--no-voice
otherwise). What is checked is the shape and sense of the line: its keys, the counts asked for,
positive times, p95 >= p50; never a time or aim_met (a shared machine is noisy).
"""
import shutil

import pytest

from benchmark_script import run_benchmark

ACTIVATIONS = 2
KEYS = {"benchmark", "activations", "baud", "p50_s", "p95_s", "floor_p50_s", "floor_p95_s", "ratio_p95_vs_floor",
        "steps_p50_s", "steps_p95_s", "first_prompt_s", "spoken_success_p50_s", "spoken_success_p95_s",
        "commands_per_activation", "exchanges_per_activation", "aim_met", "reader", "voice", "python"}
VOICE_KEYS = ("first_prompt_s", "spoken_success_p50_s", "spoken_success_p95_s")


def test_activation_benchmark_prints_one_json_line(tmp_path):
    with_voice = shutil.which("espeak-ng") is not None
    arguments = ["--activations", str(ACTIVATIONS), "--warmup", "1"] + ([] if with_voice else ["--no-voice"])
    result = run_benchmark("activation.py", arguments, tmp_path)
    assert set(result) == KEYS
    assert (result["benchmark"], result["activations"], result["baud"], result["reader"], result["voice"]) == \
        ("activation", ACTIVATIONS, 115200, "pn532:", with_voice)
    for key, value in result.items():
        if isinstance(value, float):
            assert value > 0, key
    for prefix in ("", "floor_", "steps_") + (("spoken_success_",) if with_voice else ()):
        assert result[prefix + "p95_s"] >= result[prefix + "p50_s"] > 0, prefix
    assert result["ratio_p95_vs_floor"] == pytest.approx(result["p95_s"] / result["floor_p95_s"], rel=0.01)
    # a normal old card: read 19, lock 30, write the identity 10 (tests/test_activation_on_every_driver.py)
    assert result["commands_per_activation"] == 59
    if with_voice:
        assert all(isinstance(result[key], float) for key in VOICE_KEYS)
        assert isinstance(result["aim_met"], bool)
        # Not a speed: prompts are never cut off, so the success prompt starts after the first has ended.
        assert result["spoken_success_p50_s"] >= result["first_prompt_s"]
    else:
        assert all(result[key] is None for key in VOICE_KEYS) and result["aim_met"] is None
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
