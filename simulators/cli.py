"""`ykt demo`: the main job - a seeded canteen lunch rush against a real server (simulators/fleet.py)."""
import os


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="午餐高峰演示 / seeded lunch-rush demo against a real server",
        description="启动真实同步服务器，开通商户、终端和数千名持卡人，驱动多台消费机（独立进程、HTTP 同步）完成一次"
                    "午餐高峰，期间部分终端断网、一张卡中途挂失，最后核对账本。/ Starts a real sync server, provisions "
                    "merchants, terminals and thousands of cardholders, drives a seeded lunch rush through several "
                    "POS terminal processes (some cut off the network for a while, one card reported lost "
                    "mid-rush), then checks the ledger.",
        epilog="示例 / examples:  ykt demo   |   ykt demo --seed 7 --json   |   ykt demo migrate --json   |   "
               "ykt demo --people 300 --terminals 3 --duration-s 10 --lang en   |   "
               "ykt demo --database postgresql://ykt@db/ykt")
    parser.add_argument("scenario", nargs="?", choices=("rush", "migrate"), default="rush",
                        help="rush: the lunch rush (default); migrate: go-live morning, old cards activated at the "
                             "canteen doors (激活机) and their money moved in once (--terminals: activation units)")
    parser.add_argument("--seed", type=int, default=20261121, help="random seed; the same seed replays the same rush")
    parser.add_argument("--people", type=int, default=3000, help="cardholders, or old cards for migrate (default 3000)")
    parser.add_argument("--terminals", type=int, default=6,
                        help="POS terminals, or activation units for migrate, one process each (default 6)")
    parser.add_argument("--duration-s", type=float, default=40.0, help="length of the rush in seconds (default 40)")
    parser.add_argument("--data-dir", help="keep everything here (default: a fresh temporary directory)")
    parser.add_argument("--database", default=os.environ.get("YKT_DATABASE_URL") or None, metavar="postgresql://...",
                        help="服务器数据放在这个 PostgreSQL 空库中，由两个服务器进程共用（默认 $YKT_DATABASE_URL，否则"
                             "数据目录中的 SQLite）/ keep the server's data in this empty PostgreSQL database, shared "
                             "by two server processes (default $YKT_DATABASE_URL, else SQLite in the data directory)")
    parser.add_argument("--face", type=int, nargs="?", const=8800, metavar="PORT",
                        help="显示 1 号消费机的屏幕（收银员与持卡人两面，默认端口 8800），有显示器时自动打开 / show POS "
                             "1's screens during the rush (cashier and cardholder, port 8800 unless given); opened "
                             "in Chromium when this machine has a display, else open the printed addresses")
    parser.add_argument("--no-rollout", dest="rollout", action="store_false",
                        help="高峰中不升级固件（默认：给三分之一的消费机分两阶段推送 1.1.0）/ skip the firmware update "
                             "rolled out in two stages to a third of the POS terminals mid-rush (done by default)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"),
                        help="进度与总结的语言 / language of progress and summary (default zh, or YKT_LANG)")
    from simulators import injected_faults
    injected_faults.add_options(parser)
    parser.set_defaults(handler=run_demo, parser=parser)
    from simulators import phone_cli      # `ykt phone`: bind, balance, Bluetooth water
    phone_cli.register(subparsers)


_LIMITS = (("people", 20, 200000), ("terminals", 2, 32), ("duration_s", 5, 3600))


def _face_port_problem(port):
    """Why the screens cannot be served on this local port, or None."""
    import socket
    if not 1 <= port <= 65535:
        return "--face 端口须在 1 到 65535 之间 / the port must be 1 to 65535"
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return "端口 %d 已被占用，请换一个：--face 端口 / port %d is in use; pick another with --face PORT" % (
                port, port)
    return None


def run_demo(args):
    from simulators import fleet

    for name, low, high in _LIMITS:
        if not low <= getattr(args, name) <= high:
            args.parser.error("--%s 须在 %s 到 %s 之间 / must be between %s and %s"
                              % (name.replace("_", "-"), low, high, low, high))
    from sync_server import pg_store
    try:
        pg_store.database_setting(args.database)
    except pg_store.StoreSettingError as error:
        args.parser.error(str(error))
    if args.face is not None:
        problem = _face_port_problem(args.face) if args.scenario == "rush" else \
            "--face 只用于午餐高峰 / --face is for the rush scenario"
        if problem:
            args.parser.error(problem)
    if args.scenario == "migrate":
        from simulators import migrate_day
        return migrate_day.run(args)
    return fleet.run(args)
