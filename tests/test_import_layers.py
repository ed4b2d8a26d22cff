"""Imports point one way (DESIGN.md section 6), and our modules import each other without cycles.

Every `.py` file of the layered folders is parsed with `ast`: `import x` and `from x import y`, at
module level and inside functions, classes and `if`/`try` blocks, relative imports resolved against
the file's package, and `importlib.import_module("literal")`. A name built at run time (the reader
registry's `_load_builtin`, `ykt`'s list of parts) is out of reach; the layers those name are allowed.
Only our own packages count: the standard library and third-party packages are not layers here
(`tests/test_core_imports.py` keeps the core to what MicroPython has; this file does not repeat it).

Cycles: the graph has one node per module, a package being its `__init__.py`. An import from a
module up to a package that contains it (`from sync_server.web import t` inside
`sync_server/web/hall_pages.py`) is left out of the graph: Python runs a package's `__init__` before
any of its submodules whatever the code says, so that edge orders nothing, and a package whose
`__init__` gathers its submodules while they use names from it (`sync_server/web/`) is the ordinary
facade pattern. Every other edge counts, function-level imports included: an import hidden in a
function to get past a cycle is still a cycle in the design, and moving it to the top of its module
turns it into an ImportError.
"""
import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Top-level names that are ours; an import of anything else is the standard library or a package.
OUR_TOP_LEVEL = {"firmware", "reader_drivers", "sync_server", "simulators", "ykt", "benchmarks", "tests", "tools"}
# Packages whose modules make up the import graph checked for cycles.
GRAPH_PACKAGES = ("firmware", "reader_drivers", "sync_server", "simulators", "ykt")

# Layer -> the layers it may import (its own included). `firmware` alone is the empty shell package
# around core and apps, counted with the core. simulators, benchmarks and tests may import anything.
_EVERY_LAYER_BUT_TESTS = {"firmware.core", "reader_drivers", "firmware.apps", "sync_server", "simulators", "ykt"}
ALLOWED_LAYERS = {
    "firmware.core": {"firmware.core"},
    "reader_drivers": {"firmware.core", "reader_drivers"},
    "firmware.apps": {"firmware.core", "reader_drivers", "firmware.apps"},
    "firmware.esp32": {"firmware.core", "firmware.esp32"},     # MicroPython board code: the core only
    "sync_server": {"firmware.core", "sync_server"},
    "ykt": _EVERY_LAYER_BUT_TESTS,   # the command line assembles every part
}
LAYER_FOLDERS = {"firmware.core": ("firmware/__init__.py", "firmware/core"), "reader_drivers": ("reader_drivers",),
                 "firmware.apps": ("firmware/apps",),
                 "firmware.esp32": ("firmware/esp32",), "sync_server": ("sync_server",), "ykt": ("ykt",)}

# Inside the server, finance/ is the top: only the app factory and the command line reach into it, so
# the day close and its reports build on everything below without anything below depending on them.
FINANCE = "sync_server.finance"
FINANCE_IMPORTERS = {"sync_server.app", "sync_server.cli"}

# Cycles known today and being taken apart; drop an entry once its cycle is gone.
KNOWN_CYCLES = set()

Import = collections.namedtuple("Import", "path line importer target")


def module_name(root, path):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module):
    """The layer a module of ours belongs to, or None for a module that is not ours."""
    parts = module.split(".")
    if parts[0] not in OUR_TOP_LEVEL:
        return None
    if parts[0] == "firmware":
        return "firmware.core" if len(parts) == 1 else ".".join(parts[:2])
    return parts[0]


def python_files(root, folders):
    for folder in folders:
        path = root / folder
        yield from [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def known_modules(root):
    return {module_name(root, path) for path in python_files(root, GRAPH_PACKAGES)}


def _resolve_relative(importer, is_package, level, module):
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 > len(package) - 1:
        raise ValueError("relative import beyond the top-level package")
    package = package[:len(package) - (level - 1)]
    return ".".join(package + ([module] if module else []))


def _targets(node, importer, is_package, modules):
    """The modules one import statement (or import_module call) names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve_relative(importer, is_package, node.level, node.module) if node.level else node.module
        # `from package import submodule` imports the submodule; `from module import name` the module.
        return [base + "." + alias.name if base + "." + alias.name in modules else base for alias in node.names]
    function = node.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
        return [node.args[0].value]
    return []


def scan(root, folders, modules):
    """Every import of our own modules in the files under `folders`, as Import tuples."""
    found = []
    for path in python_files(root, folders):
        importer = module_name(root, path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Call)):
                continue
            for target in dict.fromkeys(_targets(node, importer, path.name == "__init__.py", modules)):
                if layer_of(target) is not None:
                    found.append(Import(path.relative_to(root).as_posix(), node.lineno, importer, target))
    return found


def layer_violations(imports):
    """'file:line: ...' for each import from a layer into one it may not import."""
    problems = []
    for item in imports:
        importer_layer, target_layer = layer_of(item.importer), layer_of(item.target)
        allowed = ALLOWED_LAYERS.get(importer_layer)
        if allowed is not None and target_layer not in allowed:
            problems.append("%s:%d: imports %s (%s); %s may import only %s" % (
                item.path, item.line, item.target, target_layer, importer_layer, ", ".join(sorted(allowed))))
    return problems


def finance_imported_from_below(imports):
    """'file:line: ...' for each import of sync_server/finance/ by a server module other than the top."""
    def in_finance(module):
        return module == FINANCE or module.startswith(FINANCE + ".")
    return ["%s:%d: imports %s; only %s may import %s" % (item.path, item.line, item.target,
                                                          " and ".join(sorted(FINANCE_IMPORTERS)), FINANCE)
            for item in imports if in_finance(item.target) and not in_finance(item.importer)
            and layer_of(item.importer) == "sync_server" and item.importer not in FINANCE_IMPORTERS]


def _node(target, modules):
    """The module of ours an import lands on: `import a.b.c` where c is a name in a.b lands on a.b."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_cycles(imports, modules):
    """{frozenset(modules): 'a -> b (file:line) -> ... -> a'} for each strongly connected component of
    more than one module (or a module importing itself)."""
    edges = collections.defaultdict(dict)   # importer -> {imported: "file:line"}
    for item in imports:
        target = _node(item.target, modules)
        if target is None or item.importer not in modules:
            continue
        if target != item.importer and item.importer.startswith(target + "."):
            continue   # up to an enclosing package: see the docstring
        edges[item.importer].setdefault(target, "%s:%d" % (item.path, item.line))
    cycles = {}
    for component in _strongly_connected(sorted(modules), edges):
        if len(component) > 1 or component[0] in edges[component[0]]:
            cycles[frozenset(component)] = _describe_cycle(component, edges)
    return cycles


def _strongly_connected(nodes, edges):
    """Tarjan's algorithm with an explicit stack. (graphlib's CycleError names one cycle at a time, and
    a known cycle must not hide the others.)"""
    index, lowlink, on_stack, stack, components = {}, {}, set(), [], []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
            work.pop()
            if work:
                lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _describe_cycle(component, edges):
    """One concrete loop through the component's first module, each step with the line that makes it."""
    members = set(component)
    start = component[0]
    seen = {start: None}
    queue = collections.deque([start])
    while queue:   # breadth-first back to `start`: the shortest loop through it
        node = queue.popleft()
        for child in sorted(edges[node]):
            if child == start:
                steps, current = [(node, child)], node
                while seen[current] is not None:
                    steps.append((seen[current], current))
                    current = seen[current]
                steps.reverse()
                return " -> ".join([start] + ["%s (%s)" % (b, edges[a][b]) for a, b in steps])
            if child in members and child not in seen:
                seen[child] = node
                queue.append(child)
    raise AssertionError("no loop through %s in %s" % (start, component))


# -- this tree ------------------------------------------------------------------------------------------

MODULES = known_modules(ROOT)


@pytest.mark.parametrize("layer", sorted(ALLOWED_LAYERS))
def test_layer_imports_point_one_way(layer):
    imports = scan(ROOT, LAYER_FOLDERS[layer], MODULES)
    assert imports or layer == "firmware.core", "no imports of ours found in %s: is the scan broken?" % layer
    problems = layer_violations(imports)
    assert not problems, "imports against DESIGN.md section 6:\n" + "\n".join(problems)


def test_only_the_top_of_the_server_imports_finance():
    problems = finance_imported_from_below(scan(ROOT, LAYER_FOLDERS["sync_server"], MODULES))
    assert not problems, "finance/ is the top of the server:\n" + "\n".join(problems)


def test_our_modules_import_each_other_without_cycles():
    assert len(MODULES) > 50, "too few modules found: %s" % sorted(MODULES)
    cycles = import_cycles(scan(ROOT, GRAPH_PACKAGES, MODULES), MODULES)
    new = {members: description for members, description in cycles.items() if members not in KNOWN_CYCLES}
    assert not new, "import cycles between our modules:\n" + "\n".join(sorted(new.values()))


# -- the checker itself, on a small tree made for the test --------------------------------------------

def _tree(root, files):
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


_CLEAN_TREE = {
    "firmware/__init__.py": "",
    "firmware/core/__init__.py": "",
    "firmware/core/codec.py": "import struct\nfrom . import rules\n",
    "firmware/core/rules.py": "",
    "firmware/apps/__init__.py": "",
    "firmware/apps/shell.py": "from ..core import codec\nfrom reader_drivers import Reader\nimport reader_drivers.sim\n",
    # the facade pattern: __init__ gathers names from base, submodules take names from the package
    "reader_drivers/__init__.py": "from reader_drivers.base import Reader, CardGone\n",
    "reader_drivers/base.py": "from firmware.core import codec\nclass Reader: pass\nclass CardGone(Exception): pass\n",
    "reader_drivers/sim/__init__.py": "from .field import Field\n",
    "reader_drivers/sim/field.py": "from reader_drivers import CardGone\nfrom reader_drivers.sim import card\n",
    "reader_drivers/sim/card.py": "from firmware.core.codec import encode\n",
    "sync_server/__init__.py": "",
    "sync_server/ledger.py": "from firmware.core import rules\n",
    "simulators/__init__.py": "",
    "simulators/fleet.py": "from firmware.apps import shell\nfrom sync_server import ledger\n",
    "ykt/__init__.py": "",
    "ykt/cli.py": "import importlib\nimportlib.import_module('simulators.fleet')\nfrom sync_server import ledger\n",
}


def _check(root):
    modules = known_modules(root)
    problems = []
    for layer in sorted(ALLOWED_LAYERS):
        problems += layer_violations(scan(root, LAYER_FOLDERS[layer], modules))
    return problems, import_cycles(scan(root, GRAPH_PACKAGES, modules), modules)


def test_checker_passes_a_clean_tree(tmp_path):
    assert _check(_tree(tmp_path, _CLEAN_TREE)) == ([], {})


_UPWARD_IMPORTS = [
    ("firmware/core/rules.py", "import os\nfrom firmware.apps import shell\n",
     "firmware/core/rules.py:2: imports firmware.apps.shell (firmware.apps); firmware.core may import only "
     "firmware.core"),
    ("firmware/core/rules.py", "def late():\n    from ..apps.shell import run\n",
     "firmware/core/rules.py:2: imports firmware.apps.shell (firmware.apps)"),
    ("reader_drivers/sim/card.py", "from firmware.core.codec import encode\n\nclass Card:\n"
                                   "    def load(self):\n        import simulators.fleet\n",
     "reader_drivers/sim/card.py:5: imports simulators.fleet (simulators)"),
    ("firmware/apps/shell.py", "if True:\n    try:\n        from sync_server.ledger import book\n"
                               "    except ImportError:\n        pass\n",
     "firmware/apps/shell.py:3: imports sync_server.ledger (sync_server)"),
    ("firmware/apps/shell.py", "from simulators import fleet\n",
     "firmware/apps/shell.py:1: imports simulators.fleet (simulators)"),
    ("sync_server/ledger.py", "import importlib\nimportlib.import_module('firmware.apps.shell')\n",
     "sync_server/ledger.py:2: imports firmware.apps.shell (firmware.apps)"),
    ("sync_server/ledger.py", "from reader_drivers.sim import field\n",
     "sync_server/ledger.py:1: imports reader_drivers.sim.field (reader_drivers)"),
    ("ykt/cli.py", "from tests import conftest\n", "ykt/cli.py:1: imports tests (tests)"),
    ("ykt/cli.py", "import benchmarks.tap\n", "ykt/cli.py:1: imports benchmarks.tap (benchmarks)"),
]


@pytest.mark.parametrize("name, source, expected", _UPWARD_IMPORTS,
                         ids=["%d-%s" % (number, case[0]) for number, case in enumerate(_UPWARD_IMPORTS)])
def test_checker_names_an_upward_import(tmp_path, name, source, expected):
    problems, _ = _check(_tree(tmp_path, {**_CLEAN_TREE, name: source}))
    assert any(problem.startswith(expected) for problem in problems), problems
    assert len(problems) == 1, problems


def test_checker_names_an_import_of_finance_from_below(tmp_path):
    tree = _tree(tmp_path, {**_CLEAN_TREE, "sync_server/finance/__init__.py": "def day_of_ms(t):\n    return t\n",
                            "sync_server/app.py": "from sync_server.finance import day_of_ms\n",
                            "sync_server/ingest.py": "def book():\n    from sync_server.finance import day_of_ms\n"})
    problems = finance_imported_from_below(scan(tree, LAYER_FOLDERS["sync_server"], known_modules(tree)))
    assert problems == ["sync_server/ingest.py:2: imports sync_server.finance; only sync_server.app and "
                        "sync_server.cli may import sync_server.finance"]


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    tree = {**_CLEAN_TREE,
            "sync_server/cli.py": "from sync_server import ledger\n",
            "sync_server/ledger.py": "from firmware.core import rules\n\ndef close():\n"
                                     "    from sync_server.cli import helpers\n"}
    problems, cycles = _check(_tree(tmp_path, tree))
    assert problems == []
    assert cycles == {frozenset({"sync_server.cli", "sync_server.ledger"}):
                      "sync_server.cli -> sync_server.ledger (sync_server/cli.py:1) -> "
                      "sync_server.cli (sync_server/ledger.py:4)"}


def test_checker_finds_a_cycle_through_a_package_init(tmp_path):
    # Edges up to an enclosing package are left out, but two modules of one package importing each
    # other are still a loop.
    tree = {**_CLEAN_TREE,
            "reader_drivers/base.py": "from reader_drivers.sim import card\n",
            "reader_drivers/sim/card.py": "from reader_drivers.base import Reader\n"}
    _, cycles = _check(_tree(tmp_path, tree))
    assert set(cycles) == {frozenset({"reader_drivers.base", "reader_drivers.sim.card"})}, cycles


def test_checker_finds_a_module_importing_itself(tmp_path):
    _, cycles = _check(_tree(tmp_path, {**_CLEAN_TREE, "sync_server/ledger.py": "from sync_server import ledger\n"}))
    assert set(cycles) == {frozenset({"sync_server.ledger"})}
