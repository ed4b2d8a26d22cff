"""Every `ykt` command fed the mistakes people make: one line on stderr, no traceback, the exit code of
the mistake's kind (sync_server/mistakes.py).

The commands come from the parser itself, so a new command without a line in COMMANDS fails here;
the mistakes come from the options each command has (an input file, an output file, a reader, a
staff/student number, an amount, the data directory...), so a new option of a known kind is fed its
mistakes without anyone writing them down. Most runs are in this process (`ykt.cli.main` with stderr
captured: a few hundred runs in seconds); a handful run as real `python -m ykt` processes. The same
walk checks that every option says what it is for (`--help`), and a table with Chinese names lines up.
"""
import argparse
import concurrent.futures
import contextlib
import io
import os
import subprocess
import sys

import pytest

from firmware.apps import card_tool, cli as apps_cli
from sync_server import mistakes
from ykt import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each command with the arguments that make it run (or at least get past its required options); the
# mistakes below replace one of them. {d}: the data directory, {prov}: a terminal's provisioning file,
# {csv}: a good rooms CSV, {out}: a fresh output path, {card}: a card image path.
COMMANDS = {
    "server": ["--data-dir", "{d}", "--port", "1"],
    "server init": ["--data-dir", "{d}"],
    "server backup": ["--data-dir", "{d}", "--to", "{d}/backups"],
    "server restore": ["--data-dir", "{d}", "--file", "{d}/backups/none.db"],
    "fleet status": ["--data-dir", "{d}"],
    "fleet releases": ["--data-dir", "{d}"],
    "fleet release-key-add": ["--data-dir", "{d}", "--key", "ab" * 32],
    "fleet release-add": ["--data-dir", "{d}", "--file", "{d}/none.zip"],
    "fleet rollout": ["--data-dir", "{d}", "--release", "1", "--terminal", "1"],
    "fleet rotate-key": ["--data-dir", "{d}", "--terminal", "1"],
    "fleet settings": ["--data-dir", "{d}", "--terminal", "1", "--set", "offline_cap_count=3"],
    "hall merchant-add": ["--data-dir", "{d}", "--name-zh", "三食堂"],
    "hall person-add": ["--data-dir", "{d}", "--name", "王五"],
    "hall card-issue": ["--data-dir", "{d}", "--number", "S1", "--uid", "01020304"],
    "hall recharge": ["--data-dir", "{d}", "--number", "S1", "--amount", "1"],
    "hall recharge-reverse": ["--data-dir", "{d}", "--order", "x", "--reason", "r", "--supervisor", "nobody"],
    "hall cash-close": ["--data-dir", "{d}"],
    "hall cash-limits": ["--data-dir", "{d}"],
    "hall report-loss": ["--data-dir", "{d}", "--card", "100001"],
    "hall transactions": ["--data-dir", "{d}", "--number", "S1"],
    "hall terminal-register": ["--data-dir", "{d}", "--merchant", "1", "--location", "一食堂二楼", "--out", "{out}"],
    "hall terminal-revoke": ["--data-dir", "{d}", "--terminal", "1"],
    "hall staff-add": ["--data-dir", "{d}", "--username", "clerk9", "--role", "hall", "--password-stdin"],
    "hall staff-password": ["--data-dir", "{d}", "--username", "clerk1", "--password-stdin"],
    "hall staff-disable": ["--data-dir", "{d}", "--username", "clerk1"],
    "hall import-people": ["--data-dir", "{d}", "--file", "{csv}", "--category", "staff"],
    "hall reissue": ["--data-dir", "{d}", "--number", "S1", "--uid", "05060708"],
    "hall station": ["--data-dir", "{d}", "--reader", "sim:", "--card-file", "{card}", "--jobs", "0"],
    "hall unfreeze": ["--data-dir", "{d}", "--number", "S1"],
    "hall set-limits": ["--data-dir", "{d}", "--number", "S1", "--single", "50", "--daily", "200"],
    "hall change-pin": ["--data-dir", "{d}", "--number", "S1"],
    "hall electricity": ["--data-dir", "{d}", "--number", "S1", "--building", "南1", "--floor", "1", "--room", "101",
                         "--amount", "1"],
    "hall rooms-import": ["--data-dir", "{d}", "--file", "{csv}"],
    "hall rooms-list": ["--data-dir", "{d}"],
    "hall building-set": ["--data-dir", "{d}", "--building", "南1"],
    "hall rooms-deactivate": ["--data-dir", "{d}", "--building", "南1"],
    "hall rooms-activate": ["--data-dir", "{d}", "--building", "南1"],
    "hall meter-deliver": ["--data-dir", "{d}"],
    "hall meter-pending": ["--data-dir", "{d}"],
    "hall meter-retry": ["--data-dir", "{d}", "--payment", "p1"],
    "hall dispenser-sticker": ["--data-dir", "{d}", "--terminal", "1", "--out", "{out}.png"],
    "hall paycode-list": ["--data-dir", "{d}", "--number", "S1"],
    "hall paycode-stop": ["--data-dir", "{d}", "--number", "S1", "--all"],
    "hall paycode-rotate-key": ["--data-dir", "{d}"],
    "hall migration-import": ["--data-dir", "{d}", "--people", "{csv}", "--water", "{csv}"],
    "hall migration-report": ["--data-dir", "{d}"],
    "hall migration-replace": ["--data-dir", "{d}", "--serial", "1", "--uid", "0a0b0c0e"],
    "hall migration-water": ["--data-dir", "{d}", "--serial", "1"],
    "hall recharge-channel": ["--data-dir", "{d}", "--number", "S1", "--amount", "1", "--channel", "ccb"],
    "hall wallet-move": ["--data-dir", "{d}", "--number", "S1", "--from", "main", "--to", "water", "--amount", "1"],
    "terminal": ["--provision", "{prov}", "--data-dir", "{t}", "--no-sync", "--script", "{empty}"],
    "dispenser": ["--provision", "{prov}", "--data-dir", "{t}", "--no-sync", "--pins", "mock", "--virtual-clock"],
    "activation": ["--provision", "{prov}", "--data-dir", "{t}", "--no-sync", "--voice", "off"],
    "card readers": [],
    "card uid": ["--card-file", "{card}", "--timeout-ms", "10"],
    "card info": ["--card-file", "{card}", "--provision", "{prov}", "--timeout-ms", "10"],
    "card dump": ["--card-file", "{card}", "--timeout-ms", "10"],
    "demo": ["--people", "20", "--terminals", "2", "--duration-s", "5", "--data-dir", "{d}"],
    "phone bind": ["--server", "http://127.0.0.1:1", "--name", "王五", "--staff-number", "S1", "--pin", "123456"],
    "phone balance": [],
    "phone water": ["--ble", "none", "--nearby"],
    "phone paycode enable": ["--pin", "123456"],
    "phone paycode show": [],
    "phone paycode paid": [],
    "phone paycode stop": [],
    "finance close": ["--data-dir", "{d}", "--date", "2024-01-01"],
    "finance import-statement": ["--data-dir", "{d}", "--channel", "alipay", "--date", "2024-01-01", "{csv}"],
    "finance migration-report": ["--data-dir", "{d}"],
    "finance export": ["--data-dir", "{d}", "--date", "2024-01-01", "--out", "{out}"],
}

# The server's data directory (not the terminals' journal directory, not the demo's own one).
SERVER_DATA_DIR = {name for name in COMMANDS if name.split()[0] in ("hall", "finance", "fleet")} | {"server backup"}
# Options naming a file the command reads; what a file of the wrong content gives.
INPUT_FILES = {"--file": mistakes.EXIT_MALFORMED, "--people": mistakes.EXIT_MALFORMED,
               "--water": mistakes.EXIT_MALFORMED, "--provision": mistakes.EXIT_MALFORMED,
               "--script": mistakes.EXIT_MALFORMED, "--card-file": mistakes.EXIT_MALFORMED,
               "--old-keys": mistakes.EXIT_FILE, "file": mistakes.EXIT_MALFORMED, "--sticker": None,
               "--profile": None}
OUTPUT_FILES = ("--out", "--png")
# Options that name a person, card or record, with a value nobody has.
UNKNOWN = {"--number": "T9999", "--card": "999999", "--account": "9999", "--terminal": "9999", "--merchant": "9999",
           "--serial": "99999999", "--payment": "nosuch", "--username": "nosuch", "--credential": "9999"}
# Options that take a number or a date typed by a person.
NUMBERS = ("--amount", "--single", "--daily", "--counted", "--cap", "--maximum", "--date", "--uid")
# (command, option): why that mistake is not the one the command reports first.
NOT_FED = {
    ("hall recharge-reverse", "--order"): "the supervisor signs first: a wrong password is the refusal shown",
    ("hall paycode-stop", "--credential"): "--credential and --all exclude each other; tested in test_hall_cli",
    ("hall card-issue", "--card-file"): "a missing image is created blank (a new card)",
    ("hall reissue", "--card-file"): "a missing image is created blank (a new card)",
    ("hall migration-replace", "--card-file"): "a missing image is created blank (a new card)",
    ("hall station", "--card-file"): "a missing image is created blank (a new card)",
    ("hall staff-add", "--username"): "a new user name is what staff-add takes",
    ("demo", "--people"): "the number of cardholders, not a file",
    ("dispenser", "--script"): "read after the provisioning is checked (a water merchant's); fed to `terminal`",
    ("hall migration-replace", "--reader"): "needs an old card imported first; fed to card-issue and reissue",
    ("hall migration-replace", "--uid"): "needs an old card imported first; fed to card-issue and reissue",
    ("finance migration-report", "--date"): "the migration report has no day (--date is the finance commands' "
                                            "shared option)",
    ("activation", "--script"): "read after the unit's provisioning is checked (an activation merchant's, with the "
                                "old system's keys); the script's mistakes are fed to `terminal`",
}
# The phone commands are the developer's phone (simulators/phone_cli.py): a profile that is not one
# (here a file that is not UTF-8) is malformed input; a missing one is "not bound yet" (9).
PHONE_PROFILE_CODE = mistakes.EXIT_MALFORMED


def leaf_commands(parser, prefix=()):
    """{"hall recharge": its parser, ...} for every command the parser runs (a group is no command)."""
    found = {}
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        return {" ".join(prefix): parser}
    for group in groups:
        seen = set()
        for name, sub in group.choices.items():
            if id(sub) not in seen:
                seen.add(id(sub))
                found.update(leaf_commands(sub, prefix + (name,)))
    if not any(action.required for action in groups):
        found[" ".join(prefix)] = parser               # `ykt server` runs alone as well as `server init`
    return found


def every_parser(parser, prefix=()):
    yield " ".join(prefix) or "ykt", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from every_parser(sub, prefix + (name,))


def options_of(parser):
    names = set()
    for action in parser._actions:
        names.update(action.option_strings or ([action.dest] if action.dest not in ("help",) else []))
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_site(tmp_path_factory.mktemp("mistakes"))


def build_site(base):
    """A data directory with a person (number S1) who has a card, a merchant, a terminal and its
    provisioning file, a rooms CSV, a blank card image, and files that are wrong."""
    data_dir = str(base / "data")
    paths = {"d": data_dir, "prov": str(base / "prov.json"), "csv": str(base / "rooms.csv"),
             "card": str(base / "blank.card"), "t": str(base / "journal"), "empty": str(base / "empty.jsonl"),
             "base": str(base)}
    with open(paths["csv"], "w", encoding="utf-8") as handle:
        handle.write("楼栋,楼层,房间,电表号\n南1,1,101,\n")
    with open(paths["empty"], "w", encoding="utf-8"):
        pass
    with open(str(base / "not-utf8"), "wb") as handle:
        handle.write(b"\xff\xfe\x00\x81 not text \x9c\n")
    os.mkdir(str(base / "a-directory"))
    from reader_drivers.sim.classic_card import ClassicCard
    ClassicCard(bytes.fromhex("0a0b0c0d")).save(paths["card"])
    setup = (["server", "init"], ["hall", "merchant-add", "--name-zh", "一食堂"],
             ["hall", "person-add", "--name", "张三", "--id-number", "110101200001011234", "--staff-number", "S1"],
             ["hall", "card-issue", "--number", "S1", "--uid", "0a0b0c0d"],
             ["hall", "terminal-register", "--merchant", "1", "--out", paths["prov"]])
    for argv in setup:
        code, err = run_in_process(argv + ["--data-dir", data_dir])
        assert code == 0, (argv, err)
    return paths


def run_in_process(argv, stdin=""):
    """`ykt argv` here: (exit code, stderr)."""
    err = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as stop:
                code = stop.code
    finally:
        sys.stdin = old_stdin
    return code, err.getvalue()


_OUTPUTS = iter(range(10 ** 6))


def _filled(name, site):
    values = dict(site, out=os.path.join(site["base"], "out-%d" % next(_OUTPUTS)))
    return name.split() + [part.format(**values) for part in COMMANDS[name]]


def _replace(argv, option, value):
    """argv with `option`'s value replaced (or the option added); a positional is named by its dest."""
    argv = list(argv)
    if not option.startswith("-"):
        argv[-1] = value
        return argv
    if option in argv:
        argv[argv.index(option) + 1] = value
        return argv
    return argv + [option, value]


def mistakes_for(name, parser, site):
    """(what, argv, expected exit code) for every mistake that fits one of the command's options."""
    options = options_of(parser)
    argv = _filled(name, site)
    fed = []
    fed.append(("an unknown option", argv + ["--no-such-option"], mistakes.EXIT_REFUSED))
    if "--data-dir" in options and name != "server init":
        a_file = os.path.join(site["base"], "not-utf8")
        fed.append(("a data directory that is a file", _replace(argv, "--data-dir", a_file), mistakes.EXIT_FILE))
    if name in SERVER_DATA_DIR:
        fresh = os.path.join(site["base"], "never-initialised")
        fed.append(("an uninitialised data directory", _replace(argv, "--data-dir", fresh), mistakes.EXIT_NOT_READY))
    for option, wrong_content in INPUT_FILES.items():
        if option not in options or (name, option) in NOT_FED:
            continue
        if name.startswith("phone"):
            continue                                    # the phone's own refusals: test_phone_cli*
        fed.append(("a missing %s" % option, _replace(argv, option, os.path.join(site["base"], "missing.csv")),
                    mistakes.EXIT_FILE))
        fed.append(("a directory as %s" % option, _replace(argv, option, os.path.join(site["base"], "a-directory")),
                    mistakes.EXIT_FILE))
        if wrong_content is not None:
            fed.append(("a file of the wrong kind as %s" % option,
                        _replace(argv, option, os.path.join(site["base"], "not-utf8")), wrong_content))
    for option in OUTPUT_FILES:
        if option in options and not name.startswith("phone"):
            where = os.path.join(site["base"], "not-utf8", "inside-a-file")
            fed.append(("an unwritable %s" % option, _replace(argv, option, where), mistakes.EXIT_FILE))
    if "--reader" in options and (name, "--reader") not in NOT_FED:
        for url in ("nosuch:", "pn532:/dev/ttyUSB9"):
            fed.append(("the reader %s" % url, _replace(argv, "--reader", url), mistakes.EXIT_DEVICE))
    for option, value in UNKNOWN.items():
        if option in options and (name, option) not in NOT_FED and not name.startswith("phone"):
            mistaken = _replace(argv, option, value)
            for alternatives in (("--number", "--card", "--account"),      # one of them names the person
                                 ("--terminal", "--merchant")):             # a rollout's one scope
                if option not in alternatives:
                    continue
                for other in alternatives:
                    if other != option and other in mistaken:
                        del mistaken[mistaken.index(other):mistaken.index(other) + 2]
            fed.append(("an unknown %s" % option, mistaken, mistakes.EXIT_UNKNOWN))
    for option in NUMBERS:
        if option in options and (name, option) not in NOT_FED:
            fed.append(("a malformed %s" % option, _replace(argv, option, "12..5"), mistakes.EXIT_MALFORMED))
    if name.startswith("phone") and name != "phone bind":
        broken = os.path.join(site["base"], "not-utf8")
        fed.append(("a phone profile that is not one", name.split()[:1] + ["--profile", broken] + argv[1:],
                    PHONE_PROFILE_CODE))
    return fed


def _problem(what, expected, code, err):
    """What is wrong with one answer, or None."""
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err or len(lines) != 1 or code != expected:
        return "%s: exit %s (expected %s): %s" % (what, code, expected, err.strip()[-600:])
    return None


def _check(what, argv, expected, code, err):
    problem = _problem(what, expected, code, err)
    assert problem is None, problem


def test_the_commands_are_the_ones_listed_here():
    commands = set(leaf_commands(cli.build_parser()))
    assert not commands - set(COMMANDS), "commands without their mistakes here: %s" % sorted(commands - set(COMMANDS))
    assert not set(COMMANDS) - commands, "listed but gone: %s" % sorted(set(COMMANDS) - commands)


def test_every_command_answers_every_mistake_on_one_line_with_its_exit_code(site):
    fed, problems = 0, []
    for name, parser in sorted(leaf_commands(cli.build_parser()).items()):
        for what, argv, expected in mistakes_for(name, parser, site):
            code, err = run_in_process(argv)
            problems.append(_problem("%s: %s" % (name, what), expected, code, err))
            fed += 1
    problems = [problem for problem in problems if problem]
    assert not problems, "\n".join(problems)
    assert fed > 200


def test_unknown_people_cards_and_records_on_each_store(store_environment, tmp_path):
    """The look-ups behind exit code 6 are queries: the same answers on SQLite and PostgreSQL."""
    site = build_site(tmp_path)
    problems, fed = [], 0
    for name, parser in sorted(leaf_commands(cli.build_parser()).items()):
        for what, argv, expected in mistakes_for(name, parser, site):
            if expected == mistakes.EXIT_UNKNOWN:
                code, err = run_in_process(argv)
                problems.append(_problem("%s: %s" % (name, what), expected, code, err))
                fed += 1
    assert not [problem for problem in problems if problem], problems
    assert fed > 20


@pytest.mark.parametrize("lang, text", [("zh", "不存在"), ("en", "does not exist")])
def test_the_line_follows_the_language(site, lang, text, monkeypatch):
    monkeypatch.setenv("YKT_LANG", lang)
    code, err = run_in_process(["hall", "import-people", "--data-dir", site["d"], "--category", "staff", "--file",
                                os.path.join(site["base"], "missing.csv")])
    assert code == mistakes.EXIT_FILE and text in err


def test_a_handful_as_real_processes(site):
    """The same answers from `python -m ykt` (and `python -m sync_server`), run side by side."""
    missing = os.path.join(site["base"], "missing.csv")
    runs = [
        (["-m", "ykt", "card", "uid", "--reader", "pn532:/dev/ttyUSB9"], mistakes.EXIT_DEVICE),
        (["-m", "ykt", "card", "uid", "--reader", "nosuch:"], mistakes.EXIT_DEVICE),
        (["-m", "ykt", "hall", "recharge", "--number", "T9999", "--amount", "1", "--data-dir", site["d"]],
         mistakes.EXIT_UNKNOWN),
        (["-m", "ykt", "hall", "electricity", "--number", "S1", "--building", "南1", "--floor", "1", "--room",
          "101", "--amount", "12..5", "--data-dir", site["d"]], mistakes.EXIT_MALFORMED),
        (["-m", "ykt", "finance", "export", "--date", "2024-01-01", "--out", site["base"], "--data-dir",
          os.path.join(site["base"], "never")], mistakes.EXIT_NOT_READY),
        (["-m", "sync_server", "hall", "rooms-import", "--file", missing, "--data-dir", site["d"]], mistakes.EXIT_FILE),
        (["-m", "ykt", "terminal", "--provision", missing, "--data-dir", site["t"]], mistakes.EXIT_FILE),
        (["-m", "ykt", "hall", "set-limits", "--number", "S1", "--single", "50"], mistakes.EXIT_REFUSED),
    ]

    def run(argv):
        return subprocess.run([sys.executable] + argv, capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env=dict(os.environ, YKT_LANG="zh"))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        done = list(pool.map(run, [argv for argv, _ in runs]))
    for (argv, expected), result in zip(runs, done):
        _check(" ".join(argv), argv, expected, result.returncode, result.stderr)


def test_an_interrupt_is_one_line_and_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    assert mistakes.run_command(argparse.Namespace(handler=interrupted, lang="en")) == mistakes.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"


def test_a_bug_keeps_its_traceback(capsys):
    def broken(args):
        return {}["missing"]
    assert mistakes.run_command(argparse.Namespace(handler=broken, lang="zh")) == mistakes.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "内部错误" in err


def test_ykt_alone_prints_the_help_with_the_exit_codes(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "hall" in out and "finance" in out and "退出码 / exit codes" in out
    for code, zh, en in mistakes.EXIT_TABLE:
        assert "%3d  %s / %s" % (code, zh, en) in out


def test_every_option_says_what_it_is_for():
    missing = []
    for name, parser in every_parser(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:                           # argparse.SUPPRESS (a hidden alias) is a choice
                missing.append("%s %s" % (name, "/".join(action.option_strings) or action.dest))
    assert not missing, "options without help: %s" % ", ".join(missing)


def test_the_terminal_sides_exit_codes_agree_with_the_table():
    assert (card_tool.EXIT_NO_CARD, card_tool.EXIT_REFUSED, card_tool.EXIT_FILE, card_tool.EXIT_READER,
            card_tool.EXIT_NOT_OUR_CARD, card_tool.EXIT_MALFORMED) == (
        mistakes.EXIT_NO_CARD, mistakes.EXIT_REFUSED, mistakes.EXIT_FILE, mistakes.EXIT_DEVICE,
        mistakes.EXIT_UNKNOWN, mistakes.EXIT_MALFORMED)
    assert (apps_cli._EXIT_REFUSED, apps_cli._EXIT_FILE, apps_cli._EXIT_DEVICE, apps_cli._EXIT_MALFORMED) == (
        mistakes.EXIT_REFUSED, mistakes.EXIT_FILE, mistakes.EXIT_DEVICE, mistakes.EXIT_MALFORMED)


def test_a_table_with_chinese_names_lines_up(capsys):
    from rich.cells import cell_len

    from sync_server.cli_common import print_table
    rows = [("南校区1号楼", "101", "12.50"), ("B", "1002", "1234.00"), ("西山学生公寓二期", "9", "0.05")]
    print_table(argparse.Namespace(lang="zh"), (("楼栋", "building"), ("房间", "room"), ("金额(元)", "yuan")), rows,
                right=(2,))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(rows)
    for line, row in zip(lines[1:], rows):
        assert line.startswith(row[0])
        room_at = cell_len(line[:line.index(row[1], len(row[0]))])     # the room column starts at one width
        assert room_at == cell_len(lines[0][:lines[0].index("房间")])
        assert cell_len(line) == cell_len(lines[0]) or cell_len(line) == max(cell_len(text) for text in lines)
    widths = {cell_len(line) for line in lines}
    assert len(widths) == 1, [cell_len(line) for line in lines]       # right-aligned amounts end together
