"""benchmarks/paycode.py still runs end to end and prints its one JSON line (no time is asserted):
every scanned code must be accepted by the real POS shell through the emulator and the `serial:`
scanner, with the claim on a real server, or the script exits non-zero."""
from benchmark_script import run_benchmark


def test_paycode_benchmark_prints_its_line(tmp_path):
    result = run_benchmark("paycode.py", ["--codes", "15"], tmp_path)
    assert result["benchmark"] == "paycode" and result["codes"] == 15 and result["store"] == "sqlite"
    assert result["verify_median_us"] > 0 and result["ed25519_verify_median_us"] > 0
    assert result["scan_to_decision_p95_ms"] >= result["scan_to_decision_p50_ms"] > 0
