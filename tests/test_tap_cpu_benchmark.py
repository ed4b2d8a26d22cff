"""benchmarks/tap_cpu.py still runs end to end and prints its one JSON line (no time is asserted).

A small run: every tap must be accepted by the real POS shell on the sim: reader and journaled, or
the script exits non-zero; the journal floor is measured on the same disk.
"""
from benchmark_script import run_benchmark


def test_tap_benchmark_prints_one_json_line(tmp_path):
    result = run_benchmark("tap_cpu.py", ["--taps", "30", "--cards", "5", "--warmup", "2"], tmp_path)
    assert result["benchmark"] == "tap_cpu" and result["taps"] == 30
    assert result["median_us"] > 0 and result["p99_us"] >= result["median_us"]
    assert result["journal_floor_median_us"] > 0
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
