"""`ykt`: one command line for every part of the system.

Each part registers its own sub-commands (`register(subparsers)` in its `cli` module), so this file
only assembles them. Chinese first; `--lang en` or YKT_LANG=en switches messages to English.
"""
import argparse
import importlib
import os
import sys

_PARTS = ("sync_server.cli", "firmware.apps.cli", "simulators.cli", "sync_server.finance.cli")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ykt",
        description="ykt 校园一卡通: 终端、同步服务器与演示 / campus one-card terminals, sync server and demo",
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


def main(argv=None):
    os.umask(0o077)     # data directories hold ID numbers, PIN hashes and keys: nothing we create is shared
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.handler(args)
    return 0 if result is None else result


if __name__ == "__main__":
    sys.exit(main())
