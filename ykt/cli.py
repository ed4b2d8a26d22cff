"""`ykt`: one command line for every part of the system.

Each part registers its own sub-commands (`register(subparsers)` in its `cli` module), so this file
only assembles them, and runs every command through sync_server/mistakes.py: a user's mistake is one
line on stderr and an exit code of its kind (the table in `ykt --help`), a bug keeps its traceback.
Chinese first; `--lang en` or YKT_LANG=en switches messages to English. `ykt` alone prints the help
and exits 0: it is how a newcomer asks what there is.
"""
import argparse
import importlib
import os
import sys

from sync_server import mistakes

_PARTS = ("sync_server.cli", "firmware.apps.cli", "simulators.cli", "sync_server.finance.cli")


class CommandParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (exit code 2) that says where the help is: the
    sub-commands' parsers are made by the same class, so every command behaves alike."""

    def error(self, message):
        self.exit(mistakes.EXIT_REFUSED, "用法错误 / usage: %s: %s（%s --help）\n" % (self.prog, message, self.prog))


def build_parser():
    parser = CommandParser(
        prog="ykt",
        description="ykt 校园一卡通: 终端、同步服务器与演示 / campus one-card terminals, sync server and demo",
        epilog="退出码 / exit codes:\n%s\n\nYKT_LANG=en 或 --lang en：英文提示 / English messages; "
               "YKT_DEBUG=1：出错时显示调用栈 / show the traceback of a mistake too" % mistakes.exit_table_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _PARTS:
        importlib.import_module(name).register(subparsers)
    parser.set_defaults(issuing_station=_issuing_station)
    return parser


def _issuing_station():
    """The issuing station for `ykt hall card-issue / reissue --reader | --card-file`: it drives a
    reader (firmware/apps), which the server's own modules never import (DESIGN.md section 6)."""
    from firmware.apps import issuing
    return issuing


def device_errors():
    """The terminal side's exceptions that mean a reader or device is unusable (exit code 5); imported
    only when a command failed, so a command that works pays nothing for them."""
    from firmware.apps import issuing
    from firmware.apps.code_scanner import base as scanner
    from firmware.apps.voice import VoiceError
    from reader_drivers.base import ReaderError
    return ReaderError, issuing.StationError, scanner.ScannerError, VoiceError


def main(argv=None):
    os.umask(0o077)     # data directories hold ID numbers, PIN hashes and keys: nothing we create is shared
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    return mistakes.run_command(args, device_errors)


if __name__ == "__main__":
    sys.exit(main())
