"""firmware/core stays MicroPython-safe: a static check of every module, naming file and line.

tests/test_micropython.py proves the modules import and their tests pass on MicroPython 1.27 (the
WebAssembly port). This check adds what a run cannot see: imports of modules that this port happens
to carry but an ESP32 build does not (hmac, os, time ...), I/O and clock calls that break the sans-IO
rule, and syntax or library calls that MicroPython rejects or treats differently on paths no test
reaches yet. Every rule below was checked against MicroPython 1.27.0 under node.
"""
import ast
import io
import pathlib
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ROOT / "firmware" / "core"
CORE_FILES = sorted(CORE.rglob("*.py"))

# What firmware/core may import (DESIGN.md section 6; the common rules of the project).
ALLOWED_MODULES = {"hashlib", "struct", "binascii", "json", "collections", "micropython"}
ALLOWED_PACKAGE = "firmware.core"
# Modules whose import must sit in try/except ImportError: CPython does not have them.
GUARDED_MODULES = {"micropython"}

# Calls that mean I/O, a clock or dynamic code: the core receives times and bytes from its shell.
FORBIDDEN_CALLS = {"open", "print", "input", "eval", "exec", "compile", "__import__", "breakpoint"}
# Methods CPython has and MicroPython 1.27 lacks (AttributeError there).
MISSING_METHODS = {"removeprefix", "removesuffix", "bit_count", "bit_length", "zfill", "isascii",
                   "translate", "maketrans", "casefold"}
# int.from_bytes / int.to_bytes: MicroPython takes no keywords and ignores a third (signed) argument.
INT_BYTES_METHODS = {"from_bytes", "to_bytes"}
# Functions that take no keyword arguments on MicroPython (TypeError), where CPython accepts some.
NO_KEYWORD_CALLS = {"zip"}


def _is_type_checking_guard(node):
    """`if False:` - the sanctioned place for typing imports (never runs on either interpreter)."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Constant) and node.test.value is False


def _guards_import_error(node):
    if not isinstance(node, ast.Try):
        return False
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(name, ast.Name) and name.id == "ImportError" for name in names):
            return True
    return False


def _module_name(path):
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_from(path, node):
    """The absolute module a `from X import ...` names, relative imports included."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _import_allowed(module):
    top = module.split(".")[0]
    return module == ALLOWED_PACKAGE or module.startswith(ALLOWED_PACKAGE + ".") or \
        (top in ALLOWED_MODULES and "." not in module)


class _Checker(ast.NodeVisitor):
    def __init__(self, path, source):
        self.path = path
        self.lines = source.splitlines()
        self.problems = []
        self._guards = []   # stack of enclosing guard kinds: "type_checking", "import_error"

    def problem(self, node, message):
        self.problems.append("%s:%d: %s" % (self.path.relative_to(ROOT), node.lineno, message))

    # -- imports --------------------------------------------------------------------------------------
    def _check_import(self, node, module):
        if "type_checking" in self._guards:
            return
        if not _import_allowed(module):
            self.problem(node, "imports %r; firmware/core may import only %s and %s.*" % (
                module, ", ".join(sorted(ALLOWED_MODULES)), ALLOWED_PACKAGE))
        elif module.split(".")[0] in GUARDED_MODULES and "import_error" not in self._guards:
            self.problem(node, "imports %r without try/except ImportError (CPython has no %s)" % (module, module))

    def visit_Import(self, node):
        for alias in node.names:
            self._check_import(node, alias.name)

    def visit_ImportFrom(self, node):
        self._check_import(node, _resolve_from(self.path, node))
        if any(alias.name == "*" for alias in node.names):
            self.problem(node, "star import hides what the module depends on")

    def visit_If(self, node):
        if _is_type_checking_guard(node):
            self._guards.append("type_checking")
            for child in node.body:
                self.visit(child)
            self._guards.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Try(self, node):
        guarded = _guards_import_error(node)
        if guarded:
            self._guards.append("import_error")
        for child in node.body:
            self.visit(child)
        if guarded:
            self._guards.pop()
        for child in node.handlers + node.orelse + node.finalbody:
            self.visit(child)

    # -- syntax MicroPython rejects -------------------------------------------------------------------
    def visit_Match(self, node):
        self.problem(node, "match statement: MicroPython has no pattern matching (SyntaxError)")
        self.generic_visit(node)

    def visit_TryStar(self, node):   # Python 3.11+ only; harmless name on older versions
        self.problem(node, "except*: MicroPython has no exception groups (SyntaxError)")
        self.generic_visit(node)

    def _check_arguments(self, node):
        if node.args.posonlyargs:
            self.problem(node, "positional-only parameters (/): SyntaxError on MicroPython")

    def visit_FunctionDef(self, node):
        self._check_arguments(node)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self._check_arguments(node)
        self.generic_visit(node)

    def visit_FormattedValue(self, node):
        if node.conversion == ord("a"):
            self.problem(node, "f-string !a conversion: SyntaxError on MicroPython")
        # f"{x=}" (self-documenting): older MicroPython ports reject it; the project forbids it.
        line = self.lines[node.value.end_lineno - 1] if node.value.end_lineno <= len(self.lines) else ""
        rest = line[node.value.end_col_offset:].lstrip()
        if node.value.end_lineno == node.value.lineno and rest.startswith("=") and not rest.startswith("=="):
            self.problem(node, "f-string '=' specifier: not MicroPython-safe, use %-formatting")
        self.generic_visit(node)

    # -- calls ----------------------------------------------------------------------------------------
    def visit_Call(self, node):
        function = node.func
        if isinstance(function, ast.Name):
            if function.id in FORBIDDEN_CALLS:
                self.problem(node, "%s(): firmware/core does no I/O and runs no dynamic code" % function.id)
            if function.id in NO_KEYWORD_CALLS and node.keywords:
                self.problem(node, "%s() with keyword arguments: TypeError on MicroPython" % function.id)
        elif isinstance(function, ast.Attribute):
            if function.attr in MISSING_METHODS:
                self.problem(node, ".%s(): MicroPython has no such method" % function.attr)
            if function.attr in INT_BYTES_METHODS and (node.keywords or len(node.args) > 2):
                self.problem(node, ".%s() with keywords or a signed flag: MicroPython refuses keywords and "
                                   "ignores `signed` - pass (length, byteorder) / (bytes, byteorder) only"
                             % function.attr)
            if function.attr == "hex" and (node.args or node.keywords):
                self.problem(node, ".hex(sep): the project's rules forbid the separator form")
        self.generic_visit(node)


def _implicit_fstring_concatenation(path, source):
    """f'{x}' '{y}': MicroPython formats the joined literal, so the braces of the plain part are fields
    (KeyError or wrong text). CPython keeps them literal. Found on the token stream."""
    problems = []
    tokens = [token for token in tokenize.generate_tokens(io.StringIO(source).readline)
              if token.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)]
    fstring_start = getattr(tokenize, "FSTRING_START", None)   # Python 3.12+ splits f-strings
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    run = []   # (is_fstring, text, line) of adjacent string literals

    def flush():
        if len(run) > 1 and any(is_f for is_f, _, _ in run):
            for is_f, text, line in run:
                if not is_f and ("{" in text or "}" in text):
                    problems.append("%s:%d: plain literal with braces joined to an f-string: MicroPython "
                                    "treats its braces as fields" % (path.relative_to(ROOT), line))
        run.clear()

    depth = 0
    for token in tokens:
        if fstring_start is not None and token.type == fstring_start:
            depth += 1
            if depth == 1:
                run.append((True, "", token.start[0]))
            continue
        if fstring_end is not None and token.type == fstring_end:
            depth -= 1
            continue
        if depth:
            continue
        if token.type == tokenize.STRING:
            prefix = token.string[:token.string.index(token.string.lstrip("rbuRBUfF")[0])]
            run.append(("f" in prefix.lower(), token.string, token.start[0]))
        else:
            flush()
    flush()
    return problems


def _check_source(path, source):
    checker = _Checker(path, source)
    checker.visit(ast.parse(source, filename=str(path)))
    return checker.problems + _implicit_fstring_concatenation(path, source)


def check_file(path):
    """All problems in one core module, as 'path:line: message' strings."""
    return _check_source(path, path.read_text(encoding="utf-8"))


def test_core_has_modules():
    assert len(CORE_FILES) >= 5, "firmware/core looks empty: %s" % CORE_FILES


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda path: path.relative_to(CORE).as_posix())
def test_core_module_is_micropython_safe(path):
    problems = check_file(path)
    assert not problems, "firmware/core must stay MicroPython-safe:\n" + "\n".join(problems)


# -- the checker itself: each rule fires on a known bad line and stays quiet on good code -------------

_BAD_EXAMPLES = [
    ("import os\n", "imports 'os'"),
    ("import time\n", "imports 'time'"),
    ("from dataclasses import dataclass\n", "imports 'dataclasses'"),
    ("import typing\n", "imports 'typing'"),
    ("from collections.abc import Mapping\n", "imports 'collections.abc'"),
    ("import hmac\n", "imports 'hmac'"),
    ("from micropython import const\n", "without try/except ImportError"),
    ("from firmware.apps import store\n", "imports 'firmware.apps'"),
    ("from ..apps import store\n", "imports 'firmware.apps'"),
    ("match x:\n    case 1:\n        pass\n", "match statement"),
    ("def f(a, /, b):\n    return a\n", "positional-only"),
    ("x = f'{y!a}'\n", "!a conversion"),
    ("x = f'{y=}'\n", "'=' specifier"),
    ("x = f'{y}' '{z}'\n", "joined to an f-string"),
    ("print('x')\n", "print()"),
    ("data = open('f').read()\n", "open()"),
    ("x = 'ab'.removeprefix('a')\n", ".removeprefix()"),
    ("x = (5).bit_length()\n", ".bit_length()"),
    ("x = int.from_bytes(b'ab', 'big', signed=True)\n", ".from_bytes()"),
    ("x = (5).to_bytes(4, byteorder='big')\n", ".to_bytes()"),
    ("x = b'ab'.hex(':')\n", ".hex(sep)"),
    ("x = list(zip(a, b, strict=True))\n", "zip() with keyword"),
]

_GOOD_EXAMPLE = '''
import struct
from collections import namedtuple, deque
from firmware.core import records
from . import wallets
try:
    from micropython import const
except ImportError:
    def const(value):
        return value
if False:
    from typing import Optional
_LIMIT = const(5)
x = f'{records.RECORD_SIZE}' + '{literal}'
y = f'{x!r} {x:>4} {x == 1}'
z = int.from_bytes(b'ab', 'big') + len((5).to_bytes(4, 'big')) + len(b'ab'.hex())
'''


@pytest.mark.parametrize("source, expected", _BAD_EXAMPLES, ids=[expected for _, expected in _BAD_EXAMPLES])
def test_checker_names_the_offending_line(source, expected):
    path = CORE / "_example.py"   # never written: the checker only needs a path under the core folder
    problems = _check_source(path, "\n" + source)
    assert any(expected in problem and problem.startswith("firmware/core/_example.py:2:") for problem in problems), \
        problems


def test_checker_accepts_micropython_safe_code():
    assert _check_source(CORE / "_example.py", _GOOD_EXAMPLE) == []


