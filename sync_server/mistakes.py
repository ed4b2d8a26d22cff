"""What a mistake at the command line looks like: one line on stderr, in the user's language, and an
exit code that says which kind of mistake it was, so a script can tell "the file is missing" from
"nobody has that number" without reading the words.

    0    done
    1    no card on the reader in time, or the card left (`ykt card`, the issuing station)
    2    not done as typed: a usage error (argparse's) or a refusal by a business rule; the line says why
    3    done, but the figures do not add up (`ykt finance close`, `migration-report`)
    4    a file or directory: missing, unreadable, unwritable, not a directory, a key file of the wrong size
    5    a reader or device: an unknown reader URL, no such device, a reader failing, scanner, pins, voice
    6    unknown: no such person (staff/student number), card, account, terminal, order or record
    7    malformed input: a number ("12..5"), a UID, a date, a CSV/JSON/stdin line, a file that is not UTF-8
    9    not ready: the data directory is not initialised, the database or the server cannot be reached
    70   an internal error (a bug): the traceback is shown, to be reported
    130  interrupted (Ctrl-C)

2 stays what it always was (finance's EXIT_REFUSED, the terminal commands' and the phone's refusals,
the scripts that test for it), so the new codes only split off kinds that used to share it (`ykt
phone`: a profile missing is 9, not bound yet; unreadable 4; not a profile 7; no server 9). An exception none of these
kinds claims is a bug, and bugs keep their traceback: hiding it would make the one report that helps
fixing it useless, and the mistakes test (tests/test_mistakes.py) fails on any traceback, so a mistake
that slips through is found there. YKT_DEBUG=1 shows the traceback of a mistake too.

The front doors (`ykt`, `python -m sync_server`) run every command through `run_command`; commands
raise the `Mistake` subclasses below (they are `registry.HallError`s, so older `except HallError`
code still sees them), or let the ordinary exceptions (OSError, UnicodeDecodeError, csv.Error,
sqlite3 and psycopg errors, keys.MasterKeyError) reach it. This module knows only the server's layer;
`ykt` adds the reader and device errors of the terminal side (`device_errors`).
"""
import csv
import errno
import json
import os
import sqlite3
import sys
import traceback

from sync_server import keys, messages, registry

EXIT_NO_CARD = 1
EXIT_REFUSED = 2
EXIT_UNBALANCED = 3
EXIT_FILE = 4
EXIT_DEVICE = 5
EXIT_UNKNOWN = 6
EXIT_MALFORMED = 7
EXIT_NOT_READY = 9
EXIT_BUG = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_TABLE = (
    (0, "完成", "done"),
    (EXIT_NO_CARD, "读卡器上没有卡片，或卡片已移开", "no card on the reader in time, or it left"),
    (EXIT_REFUSED, "用法错误，或业务规则不允许（提示说明原因）", "usage error, or refused by a business rule (the line says why)"),
    (EXIT_UNBALANCED, "已完成，但账目不平", "done, but the figures do not add up"),
    (EXIT_FILE, "文件或目录不存在、不可读或不可写", "a file or directory missing, unreadable or unwritable"),
    (EXIT_DEVICE, "读卡器或设备不可用", "a reader or device unusable"),
    (EXIT_UNKNOWN, "查无此人、此卡或此记录", "no such person, card or record"),
    (EXIT_MALFORMED, "输入格式错误（数字、日期、文件中的某行）", "malformed input (a number, a date, a line of a file)"),
    (EXIT_NOT_READY, "数据目录未初始化，或数据库、服务器无法连接", "not initialised, or the database or server unreachable"),
    (EXIT_BUG, "程序内部错误（请报告）", "internal error (please report it)"),
    (EXIT_INTERRUPTED, "已中断（Ctrl-C）", "interrupted (Ctrl-C)"),
)

# ServiceError codes (status 400) that say the input could not be read at all, rather than refused.
MALFORMED_SERVICE_CODES = frozenset(("bad_uid", "bad_request", "pin_format", "bad_idempotency_key", "import_refused",
                                     "rooms_import_refused"))


class Mistake(registry.HallError):
    """A user's mistake with a bilingual message; the subclass says its exit code."""
    exit_code = EXIT_REFUSED


class NoCardYet(Mistake):
    exit_code = EXIT_NO_CARD


class FileMistake(Mistake):
    exit_code = EXIT_FILE


class DeviceMistake(Mistake):
    exit_code = EXIT_DEVICE


class UnknownRecord(Mistake):
    exit_code = EXIT_UNKNOWN


class MalformedInput(Mistake):
    exit_code = EXIT_MALFORMED


class NotReady(Mistake):
    exit_code = EXIT_NOT_READY


_ERRNO_TEXTS = {
    errno.ENOENT: ("不存在", "does not exist"),
    errno.EACCES: ("没有权限", "permission denied"),
    errno.EPERM: ("没有权限", "permission denied"),
    errno.EISDIR: ("是一个目录，不是文件", "is a directory, not a file"),
    errno.ENOTDIR: ("路径中有一段不是目录", "a part of the path is not a directory"),
    errno.EEXIST: ("已存在（且不是目录）", "already exists (and is not a directory)"),
    errno.ENOSPC: ("磁盘已满", "the disk is full"),
    errno.EROFS: ("位于只读文件系统", "is on a read-only file system"),
}


def file_text(error):
    """(zh, en) for an OSError: the path and what is wrong with it, in words."""
    path = error.filename if error.filename is not None else ""
    zh, en = _ERRNO_TEXTS.get(error.errno, (error.strerror or str(error),) * 2)
    where = " %s" % path if path != "" else ""
    return "文件或目录%s：%s" % (where, zh), "file or directory%s: %s" % (where, en)


def one_line(text):
    """Messages that list several problems (rows of a CSV) keep them, on one line."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _psycopg_unreachable(error):
    module = type(error).__module__ or ""
    return module.startswith("psycopg") and type(error).__name__ in ("OperationalError", "InterfaceError")


def classify(error, device_errors=()):
    """(exit code, zh, en) for an exception that is a user's mistake, or None for a bug."""
    from sync_server import legacy_migration
    from sync_server.services import ServiceError
    if isinstance(error, Mistake):
        return error.exit_code, error.zh, error.en
    if isinstance(error, ServiceError):
        if error.status == 404:
            return EXIT_UNKNOWN, error.zh, error.en
        return (EXIT_MALFORMED if error.code in MALFORMED_SERVICE_CODES else EXIT_REFUSED), error.zh, error.en
    if isinstance(error, legacy_migration.ExportRefused):
        return EXIT_MALFORMED, error.zh, error.en
    if isinstance(error, messages.BilingualError):
        return (EXIT_MALFORMED if getattr(error, "malformed", False) else EXIT_REFUSED), error.zh, error.en
    if device_errors and isinstance(error, device_errors):
        zh, en = getattr(error, "zh", None), getattr(error, "en", None)
        return EXIT_DEVICE, zh or "设备错误：%s" % error, en or "device error: %s" % error
    if isinstance(error, keys.MasterKeyError):
        return EXIT_FILE, "密钥文件不可用：%s" % error, "key file unusable: %s" % error
    if isinstance(error, UnicodeError):
        return EXIT_MALFORMED, "输入不是 UTF-8 文本：%s" % error, "the input is not UTF-8 text: %s" % error
    if isinstance(error, (csv.Error, json.JSONDecodeError)):
        return EXIT_MALFORMED, "输入格式错误：%s" % error, "malformed input: %s" % error
    if isinstance(error, ConnectionError) or _psycopg_unreachable(error):
        return EXIT_NOT_READY, "无法连接：%s" % error, "cannot connect: %s" % error
    if isinstance(error, OSError):
        return (EXIT_FILE,) + file_text(error)
    if isinstance(error, sqlite3.DatabaseError):
        return EXIT_NOT_READY, "数据库不可用：%s" % error, "the database is unusable: %s" % error
    return None


def _lang(args):
    wanted = getattr(args, "lang", None) or messages.lang_from_env()
    return "en" if str(wanted).startswith("en") else "zh"


def run_command(args, device_errors=()):
    """Run `args.handler(args)`: its exit code; a mistake gives one line on stderr and its code, a bug
    its traceback and EXIT_BUG, Ctrl-C one line and 130. `device_errors`: exception types (or a
    function returning them, called only when something went wrong) that mean a reader or device."""
    lang = _lang(args)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        print("已中断" if lang == "zh" else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:                 # `ykt ... | head`: the reader went away, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as error:
        found = classify(error, tuple(device_errors() if callable(device_errors) else device_errors))
        if found is None:
            traceback.print_exc()
            print("内部错误（程序缺陷），请把以上信息报告给系统管理员" if lang == "zh" else
                  "internal error (a bug): please report the lines above", file=sys.stderr)
            return EXIT_BUG
        if os.environ.get("YKT_DEBUG") == "1":
            traceback.print_exc()
        code, zh, en = found
        print(one_line(en if lang == "en" else zh), file=sys.stderr)
        return code
    return 0 if result is None else result


def exit_table_text():
    """The table for `ykt --help`'s epilog and the README."""
    return "\n".join("  %3d  %s / %s" % row for row in EXIT_TABLE)
