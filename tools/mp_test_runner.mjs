#!/usr/bin/env node
// Runs firmware/core's unit tests under the real MicroPython (the WebAssembly port from npm).
//
// It copies every .py file under firmware/ and tests/core/ into MicroPython's in-memory file
// system, imports each test module, calls every top-level function whose name starts with "test"
// (the same rule pytest uses), and prints PASS/FAIL per test with MicroPython's own traceback, then a
// summary line. Exit status: 0 all passed, 1 a test failed or a module did not import, 2 bad usage or
// missing files. It never touches the real file system beyond reading the sources.
//
// Limits: test modules are plain functions with asserts - no fixtures, no pytest.raises, no
// hypothesis (those are CPython-only and belong in tests/ outside tests/core/). Each run starts a
// fresh interpreter; tests inside one run share it, as they share one process under pytest.
//
// Usage: node tools/mp_test_runner.mjs [--import-core] [--heapsize BYTES] [--root DIR] [tests/core/test_x.py ...]
//   no file arguments: every tests/core/test_*.py
//   --import-core: also import every module under firmware/core/ (catches syntax and imports that
//                  MicroPython rejects even in modules no test touches yet)
//   --root DIR: the project folder holding firmware/ and tests/core/ (default: this file's parent)
//   test files are taken relative to the project folder
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

let ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MP_ROOT = "/ykt";                 // where the sources live inside MicroPython's file system
const MAX_SOURCE_FILES = 2000;          // a bound on the copy; far above the project's size
const DEFAULT_HEAP_BYTES = 4 * 1024 * 1024;

function usage(message) {
  process.stderr.write(`mp_test_runner: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const options = { importCore: false, heapBytes: DEFAULT_HEAP_BYTES, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--import-core") options.importCore = true;
    else if (arg === "--root") ROOT = path.resolve(argv[++i] || usage("--root needs a directory"));
    else if (arg === "--heapsize") {
      options.heapBytes = parseInt(argv[++i], 10);
      if (!(options.heapBytes > 0)) usage("--heapsize needs a positive number of bytes");
    } else if (arg.startsWith("-")) usage(`unknown option ${arg}`);
    else options.files.push(arg);
  }
  return options;
}

// Relative paths of the .py files under `dir` (recursively), skipping caches.
function pythonFiles(dir) {
  const found = [];
  const walk = (relative) => {
    for (const entry of fs.readdirSync(path.join(ROOT, relative), { withFileTypes: true })) {
      const child = path.posix.join(relative, entry.name);
      if (entry.isDirectory() && entry.name !== "__pycache__") walk(child);
      else if (entry.isFile() && entry.name.endsWith(".py")) found.push(child);
      if (found.length > MAX_SOURCE_FILES) usage(`more than ${MAX_SOURCE_FILES} files under ${dir}`);
    }
  };
  walk(dir);
  return found.sort();
}

function copyIntoMicroPython(mp, relativeFiles) {
  const made = new Set();
  const mkdirs = (dir) => {
    if (dir === MP_ROOT || made.has(dir)) return;
    mkdirs(path.posix.dirname(dir));
    mp.FS.mkdir(dir);
    made.add(dir);
  };
  mp.FS.mkdir(MP_ROOT);
  for (const relative of relativeFiles) {
    const target = path.posix.join(MP_ROOT, relative);
    mkdirs(path.posix.dirname(target));
    mp.FS.writeFile(target, fs.readFileSync(path.join(ROOT, relative)));
  }
  // tests/ has no __init__.py in the repository (pytest runs it in rootdir mode), but MicroPython
  // needs one to import tests.core.* as a package.
  if (!relativeFiles.includes("tests/__init__.py")) mp.FS.writeFile(`${MP_ROOT}/tests/__init__.py`, "");
}

// The driver runs inside MicroPython. Results go to stdout as lines; the last line is a JSON summary
// that this file parses, so a crash of the interpreter itself is noticed (no summary line).
const DRIVER = String.raw`
import sys, json
sys.path.insert(0, ROOT)

_counts = {"passed": 0, "failed": 0, "errors": 0}

def _report(status, node_id, error=None):
    print("%s %s" % (status, node_id))
    if error is not None:
        sys.print_exception(error)
        print("")

def _import(module_name, node_id):
    try:
        __import__(module_name)
        return sys.modules[module_name]
    except Exception as error:
        _counts["errors"] += 1
        _report("ERROR", node_id + " (import)", error)
        return None

def _test_names(module, source_path):
    # Definition order first (MicroPython's module dict is unordered), then anything defined another way.
    names = []
    with open(source_path) as source:
        for line in source:
            if line.startswith("def test"):
                name = line[4:].split("(")[0].strip()
                if name not in names:
                    names.append(name)
    for name in sorted(dir(module)):
        if name.startswith("test") and name not in names and callable(getattr(module, name)):
            names.append(name)
    return [name for name in names if callable(getattr(module, name, None))]

def _run_module(relative_path):
    module_name = relative_path[:-3].replace("/", ".")
    module = _import(module_name, relative_path)
    if module is None:
        return
    for name in dir(module):
        if name.startswith("Test") and isinstance(getattr(module, name), type):
            _counts["errors"] += 1
            _report("ERROR", "%s::%s" % (relative_path, name), ValueError(
                "test classes are not run under MicroPython; write plain test functions"))
    names = _test_names(module, ROOT + "/" + relative_path)
    if not names:
        _counts["errors"] += 1
        _report("ERROR", relative_path, ValueError("no test functions found"))
    for name in names:
        node_id = "%s::%s" % (relative_path, name)
        try:
            getattr(module, name)()
        except Exception as error:
            _counts["failed"] += 1
            _report("FAIL", node_id, error)
        else:
            _counts["passed"] += 1
            _report("PASS", node_id)

for _relative in CORE_MODULES:
    _module_name = _relative[:-3].replace("/", ".")
    if _module_name.endswith(".__init__"):
        _module_name = _module_name[:-9]
    if _import(_module_name, _relative) is not None:
        _counts["passed"] += 1
        _report("PASS", _relative + " (import)")

for _relative in TEST_MODULES:
    _run_module(_relative)

print("SUMMARY " + json.dumps(_counts))
`;

async function main() {
  const options = parseArgs(process.argv.slice(2));
  for (const dir of ["firmware", "tests/core"]) {
    if (!fs.existsSync(path.join(ROOT, dir))) usage(`${dir}/ not found under ${ROOT}`);
  }
  let testModules = options.files.map((file) => path.relative(ROOT, path.resolve(ROOT, file)).split(path.sep).join("/"));
  if (testModules.length === 0 && !options.importCore) {
    testModules = pythonFiles("tests/core").filter((file) => /^tests\/core\/test[^/]*\.py$/.test(file));
    if (testModules.length === 0) usage("no tests/core/test_*.py modules found");
  }
  for (const file of testModules) {
    if (!/^tests\/core\/[^/]+\.py$/.test(file) || !fs.existsSync(path.join(ROOT, file))) {
      usage(`${file}: test modules must be existing files directly under tests/core/`);
    }
  }
  const coreModules = options.importCore ? pythonFiles("firmware/core") : [];

  const lines = [];
  const mp = await loadMicroPython({
    heapsize: options.heapBytes,
    stdout: (line) => { lines.push(line); if (!line.startsWith("SUMMARY ")) process.stdout.write(line + "\n"); },
    stderr: (line) => process.stderr.write(line + "\n"),
  });
  copyIntoMicroPython(mp, [...pythonFiles("firmware"), ...pythonFiles("tests/core")]);

  mp.runPython("import sys\n_version = '%d.%d.%d' % sys.implementation.version[:3]");
  const version = mp.globals.get("_version");
  const prelude = `ROOT = ${JSON.stringify(MP_ROOT)}\nCORE_MODULES = ${JSON.stringify(coreModules)}\n` +
    `TEST_MODULES = ${JSON.stringify(testModules)}\n`;
  try {
    mp.runPython(prelude + DRIVER);
  } catch (error) {
    process.stdout.write(`MicroPython ${version}: the test driver itself failed:\n${error.message || error}\n`);
    process.exit(1);
  }
  const summaryLine = lines.find((line) => line.startsWith("SUMMARY "));
  if (!summaryLine) {
    process.stdout.write(`MicroPython ${version}: no summary (the interpreter stopped early)\n`);
    process.exit(1);
  }
  const counts = JSON.parse(summaryLine.slice("SUMMARY ".length));
  const ok = counts.failed === 0 && counts.errors === 0 && counts.passed > 0;
  process.stdout.write(`MicroPython ${version}: ${counts.passed} passed, ${counts.failed} failed, ` +
    `${counts.errors} errors in ${testModules.length} test modules` +
    (coreModules.length ? ` and ${coreModules.length} core modules imported` : "") +
    ` - ${ok ? "OK" : "FAILED"}\n`);
  process.exit(ok ? 0 : 1);
}

await main();
