"""`python -m sync_server ...`: the server's own sub-commands (`server`, `hall`) without the rest of
`ykt`, so the server starts even on a machine that carries no terminal code."""
import argparse
import sys

from sync_server import cli, mistakes, private_dir


def main(argv=None):
    private_dir.owner_only_umask()
    parser = argparse.ArgumentParser(prog="python -m sync_server")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    cli.register(subparsers)
    args = parser.parse_args(argv)
    return mistakes.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
