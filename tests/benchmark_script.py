"""Run a script in benchmarks/ the way its users do (`python benchmarks/x.py`, from the repository
root) and take its one JSON line. Times in that line are never asserted: a shared machine is noisy.
"""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARK_DEADLINE_S = 120   # a deadline to give up waiting, not a performance assertion


def run_benchmark(script_name, arguments, data_dir):
    """benchmarks/<script_name> with `arguments` and --dir data_dir; it must exit 0 and print exactly
    one line on stdout -> that line, decoded."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script_name), *arguments, "--dir", str(data_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=BENCHMARK_DEADLINE_S)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, completed.stdout
    return json.loads(lines[0])
