"""benchmarks/water_start.py runs end to end and prints its one JSON line (no time is asserted): a
few phone starts over the simulated air against the real server, each ended and settled."""
from benchmark_script import run_benchmark


def test_water_start_benchmark_prints_its_line(tmp_path):
    line = run_benchmark("water_start.py", ["--starts", "5", "--warmup", "1"], tmp_path)
    assert line["benchmark"] == "water_start" and line["starts"] == 5 and line["store"] == "sqlite"
    for name in ("start_p50_s", "start_p95_s", "floor_p50_s", "ble_read_p50_s", "http_p50_s", "ble_write_p50_s"):
        assert line[name] > 0, name
    assert line["start_p95_s"] >= line["start_p50_s"] and "aim_met" in line
