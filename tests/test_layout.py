"""The test of module `x.py` is found by its name: `tests/test_x.py` (`tests/core/test_x.py` for the
core's tests that also run under MicroPython), or `tests/test_<package>_x.py` where the package says
which `x` is meant (`test_finance_close.py`, `test_web_auth.py`).

A name may add one aspect after the module's: `_properties` (Hypothesis), `_faults`, `_crash`,
`_fsync_order`, `_clock`, `_nfcpy` (checked by nfcpy), `_on_every_driver`, `_benchmark` (a script in
`benchmarks/`). The few tests that are about the whole rather than one module are listed below with
what they cover; a new test file that matches nothing fails here until it is named after its module
or listed.
"""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("firmware", "reader_drivers", "sync_server", "simulators", "benchmarks", "ykt", "tools")
ASPECTS = ("_properties", "_faults", "_crash", "_fsync_order", "_clock", "_nfcpy", "_on_every_driver",
           "_benchmark", "_types", "_paycode", "_activation", "_pages", "_browser")
ABOUT_THE_WHOLE = {
    "core_imports": "firmware/core as a whole: nothing MicroPython lacks",
    "import_layers": "every package: imports point one way, no cycles",
    "layout": "this rule",
    "micropython": "tests/core under the real MicroPython",
    "formats": "the core's shared formats: crypto.py, mifare.py and card_layout.py against published vectors",
    "server_cli": "sync_server/cli.py, the `ykt server` and `ykt hall` commands",
    "server_crash": "the server process killed mid-upload",
    "pg_servers": "several server processes on one PostgreSQL, and its standby promoted mid-rush",
    "web_browser": "every web page in headless Chromium",
}


def module_names():
    names = set()
    for folder in SOURCE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if ".venv" in path.parts or "node_modules" in path.parts:
                continue
            stem = path.stem if path.stem != "__init__" else path.parent.name
            names.add(stem)
            names.add("%s_%s" % (path.parent.name, stem))
        for path in (ROOT / folder).rglob("*"):
            if path.is_dir() and (path / "__init__.py").exists():
                names.add(path.name)
    # the suite's own helpers (tests/pg_cluster.py, ...) may have tests of their own too
    names.update(path.stem for path in (ROOT / "tests").glob("*.py") if not path.stem.startswith("test_"))
    return names


def unexplained(test_names, modules):
    """The test names that name no module (with at most one aspect) and are not about the whole."""
    left = []
    for name in test_names:
        candidates = [name] + [name[:-len(aspect)] for aspect in ASPECTS if name.endswith(aspect)]
        if not any(candidate in modules for candidate in candidates) and name not in ABOUT_THE_WHOLE:
            left.append(name)
    return sorted(left)


def names_of_test_files():
    paths = list((ROOT / "tests").glob("test_*.py")) + list((ROOT / "tests" / "core").glob("test_*.py"))
    return [path.stem[len("test_"):] for path in paths]


def test_every_test_file_is_named_after_what_it_tests():
    left = unexplained(names_of_test_files(), module_names())
    assert not left, ("tests named after no module: %s (name them test_<module>[_aspect].py, or list them "
                      "in ABOUT_THE_WHOLE with what they cover)" % ", ".join("test_%s.py" % n for n in left))


def test_the_rule_refuses_a_name_that_says_nothing():
    modules = {"pos", "pos_terminal", "store", "finance_close"}
    assert unexplained(["pos", "pos_terminal_faults", "finance_close", "store_properties"], modules) == []
    assert unexplained(["pos_shell", "terminal_store", "misc", "store_extra"], modules) == \
        ["misc", "pos_shell", "store_extra", "terminal_store"]


def test_every_listed_whole_system_test_exists():
    assert not set(ABOUT_THE_WHOLE) - set(names_of_test_files()), "a listed test file is gone: take it off the list"
