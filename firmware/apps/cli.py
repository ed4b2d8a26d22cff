"""`ykt terminal`: run a canteen POS terminal (the shell in firmware/apps/pos_terminal.py).

    ykt terminal --provision F --data-dir D [--reader sim:] [--script taps.jsonl | --script -]
                 [--server-url URL] [--drain-timeout-s S] [--decisions-only] [--no-sync]

`ykt card readers | uid | info | dump` (firmware/apps/card_tool.py) is the technicians' card tool.

Messages are Chinese first; `--lang en` (or YKT_LANG=en) switches them to English.
"""
import os
import sys

_EXIT_REFUSED = 2


def register(subparsers):
    parser = subparsers.add_parser(
        "terminal", help="运行消费机终端 / run a canteen POS terminal",
        description="消费机终端：读卡、脱机决策、本地记账、后台同步 / canteen POS: read cards, decide offline, "
                    "journal locally, sync in the background")
    parser.add_argument("--provision", required=True, help="provisioning JSON from `ykt hall terminal-register`")
    parser.add_argument("--data-dir", required=True, help="where the terminal keeps its SQLite journal")
    parser.add_argument("--reader", default="sim:", help="reader URL: sim:, pn532:/dev/ttyS0, pcsc:ACR122, nfcpy:usb")
    parser.add_argument("--script", help="JSON lines of taps (a file, or - for stdin); default: stdin")
    parser.add_argument("--cards-dir", help="where card images named <uid>.card live (sim: reader)")
    parser.add_argument("--server-url", help="override the server URL of the provisioning file")
    parser.add_argument("--sync-interval-ms", type=int, help="default: the server's configuration")
    parser.add_argument("--drain-timeout-s", type=float, default=0.0,
                        help="after the script, sync until nothing is unacknowledged (at most this long)")
    parser.add_argument("--decisions-only", action="store_true", help="print only decision lines")
    parser.add_argument("--no-sync", action="store_true", help="never contact the server (bench use)")
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"))
    parser.set_defaults(handler=run_terminal)

    from firmware.apps import card_tool      # `ykt card ...`: readers, uid, info, dump for technicians
    card_tool.register(subparsers)


def run_terminal(args):
    from firmware.apps.pos_terminal import PosTerminal, load_provisioning
    from reader_drivers.base import open_reader

    try:
        provisioning = load_provisioning(args.provision)
    except (OSError, ValueError) as error:
        print("终端配置文件无效 / bad provisioning file: %s" % error, file=sys.stderr)
        return _EXIT_REFUSED
    reader = open_reader(args.reader)
    terminal = PosTerminal(provisioning, args.data_dir, reader, lang=args.lang, display=not args.decisions_only,
                           sync=not args.no_sync, server_url=args.server_url, cards_dir=args.cards_dir,
                           sync_interval_ms=args.sync_interval_ms)
    try:
        terminal.start_sync()
        if args.script and args.script != "-":
            with open(args.script, encoding="utf-8") as stream:
                terminal.run_script(stream)
        else:
            terminal.run_script(sys.stdin)
        if args.drain_timeout_s > 0:
            terminal.drain(args.drain_timeout_s)
    finally:
        terminal.close()
        reader.close()
    return 0
