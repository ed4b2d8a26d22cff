"""firmware/core under the real MicroPython: the WebAssembly port from npm, run by node.

One pytest test per tests/core/ module (so a failure names the module) plus one that imports every
firmware/core module, each running tools/mp_test_runner.mjs in a fresh interpreter. The same modules
also run under CPython, because pytest collects tests/core/ like any other folder.

Never skipped: `make test` installs node and the npm package, so their absence is a broken set-up and
fails loudly with what to run.
"""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tools" / "mp_test_runner.mjs"
PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
CORE_TEST_MODULES = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "tests" / "core").glob("test*.py"))
RUN_TIMEOUT_S = 120


def _node():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; `make test` installs it (apt-get install nodejs npm)", pytrace=False)
    if not (PACKAGE / "micropython.mjs").exists():
        pytest.fail("%s is missing; run `npm install` (or `make test`, which does it)" % PACKAGE.relative_to(ROOT),
                    pytrace=False)
    return node


def _run(*arguments):
    completed = subprocess.run([_node(), str(RUNNER), *arguments], cwd=ROOT, capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        pytest.fail("under MicroPython (exit %d):\n%s" % (completed.returncode, output), pytrace=False)
    return output


def test_core_test_modules_exist():
    assert CORE_TEST_MODULES, "tests/core/ has no test modules to run under MicroPython"


@pytest.mark.parametrize("module", CORE_TEST_MODULES)
def test_core_module_passes_under_micropython(module):
    output = _run(module)
    assert " 0 failed, 0 errors" in output and "PASS %s::" % module in output, output


def test_every_core_module_imports_under_micropython():
    output = _run("--import-core")
    core_modules = sorted((ROOT / "firmware" / "core").glob("*.py"))
    for path in core_modules:
        assert "PASS firmware/core/%s (import)" % path.name in output, output


def test_runner_reports_a_failing_module(tmp_path):
    """The harness itself: a failing assert and a CPython-only call must make it exit non-zero."""
    shutil.copytree(ROOT / "firmware", tmp_path / "firmware", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests" / "core").mkdir(parents=True)
    (tmp_path / "tests" / "core" / "__init__.py").write_text("")
    (tmp_path / "tests" / "core" / "test_probe.py").write_text(
        "from firmware.core import records\n\n\ndef test_passes():\n    assert records.RECORD_SIZE == 52\n\n\n"
        "def test_fails():\n    assert 'ab'.removeprefix('a') == 'b'\n")
    completed = subprocess.run([_node(), str(RUNNER), "--root", str(tmp_path)], cwd=ROOT, capture_output=True,
                               text=True, timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "PASS tests/core/test_probe.py::test_passes" in completed.stdout
    assert "FAIL tests/core/test_probe.py::test_fails" in completed.stdout
    assert "removeprefix" in completed.stdout
    assert "1 passed, 1 failed" in completed.stdout
