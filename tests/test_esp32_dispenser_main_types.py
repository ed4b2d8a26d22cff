"""firmware/esp32 (the ESP32 dispenser board, MicroPython) type-checked against the board's stubs.

mypy runs with MicroPython's own standard library stubs as its typeshed (micropython-stdlib-stubs),
the ESP32 port's modules (`machine`, `bluetooth`, `time`, ... from micropython-esp32-stubs, gathered
into a folder of their own so nothing else installed is seen) and our stubs of micropython-lib's
aioble (firmware/esp32/stubs, written from its source). A deliberate mistake is caught too, so the
check cannot pass by checking nothing.
"""
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOARD = ROOT / "firmware" / "esp32" / "dispenser_main.py"
_TIMEOUT_S = 240


def _stub_folder(tmp_path):
    """The ESP32 port's .pyi files and the stdlib stubs' shared `_mpy_shed`, linked into a folder of
    their own (the packages put them at the top of site-packages); -> (folder, their module names)."""
    folder = tmp_path / "esp32-stubs"
    folder.mkdir()
    modules = set()
    entries = [e for e in importlib.metadata.files("micropython-esp32-stubs") if e.suffix == ".pyi"]
    entries += [e for e in importlib.metadata.files("micropython-stdlib-stubs")
                if e.suffix == ".pyi" and e.parts[0] == "_mpy_shed"]
    for entry in entries:
        target = folder / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(entry.locate(), target)
        modules.add(entry.parts[0].removesuffix(".pyi"))
    return folder, modules


def _typeshed():
    distribution = importlib.metadata.distribution("micropython-stdlib-stubs")
    return str(distribution.locate_file(""))          # holds stdlib/ and _mpy_shed/


def _mypy(tmp_path, path):
    stubs, modules = _stub_folder(tmp_path)
    # the published stubs have findings of their own (overloads, abstract classes): ours are what is checked
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n" + "".join("[mypy-%s.*]\nignore_errors = True\n[mypy-%s]\nignore_errors = True\n"
                                           % (name, name) for name in sorted(modules)), encoding="utf-8")
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(ROOT / "firmware" / "esp32" / "stubs"), str(stubs),
                                                     str(ROOT)]))
    # --check-untyped-defs: the board's functions without annotations are checked too
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--check-untyped-defs",
                           "--custom-typeshed-dir", _typeshed(), "--no-site-packages",
                           "--follow-imports=silent", "--cache-dir", str(tmp_path / "cache"), "--python-version",
                           "3.11", str(path)],
                          capture_output=True, text=True, timeout=_TIMEOUT_S, cwd=tmp_path, env=env)


def test_the_board_code_type_checks(tmp_path):
    result = _mypy(tmp_path, BOARD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_mistake_in_the_board_code_is_caught(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    source = BOARD.read_text(encoding="utf-8")
    source = source.replace("self.meter.irq(handler=self._pulse, trigger=Pin.IRQ_RISING)",
                            'self.meter.irq(handler=self._pulse, trigger="rising")')
    source = source.replace("aioble.register_services(self.service)", "aioble.register_service(self.service)")
    source = source.replace("max_len=water_grants.MAX_WRITE_BYTES", "maxlen=water_grants.MAX_WRITE_BYTES")
    (broken / "dispenser_main.py").write_text(source, encoding="utf-8")
    shutil.copytree(ROOT / "firmware" / "esp32" / "stubs", broken / "stubs")
    result = _mypy(tmp_path, broken / "dispenser_main.py")
    assert result.returncode != 0
    assert "register_service" in result.stdout and "trigger" in result.stdout, result.stdout
    assert '"maxlen"' in result.stdout, result.stdout
