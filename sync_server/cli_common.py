"""What the `ykt server` / `ykt hall` commands share: the data directory, the output language, opening
the database, and the issuing station's card.

sync_server/cli.py (server and core hall commands) and sync_server/services/hall_cli.py (the
cardholder-service commands) both build on these; neither imports the other's helpers.
"""
import os

from sync_server import db as dbmod, keys, messages, pg_store, private_dir, registry


def data_dir_of(args):
    return os.path.abspath(args.data_dir or os.environ.get("YKT_DATA_DIR", "./data"))


def lang_of(args):
    return "en" if (getattr(args, "lang", None) or messages.lang_from_env()).startswith("en") else "zh"


def say(args, zh, en):
    print(en if lang_of(args) == "en" else zh)


def open_database(args):
    """The data directory's database (or $YKT_DATABASE_URL's), upgraded; HallError when `ykt server
    init` has not run."""
    path = dbmod.store_location(data_dir_of(args))
    if not pg_store.is_postgresql(path) and not os.path.exists(path):
        raise registry.HallError("数据目录尚未初始化，请先运行 ykt server init",
                                 "data directory not initialised: run ykt server init")
    private_dir.secure_dir(data_dir_of(args))
    return dbmod.init_db(path)


def open_station(args):
    """The issuing station's card when --reader / --card-file is given (checked blank), else None."""
    if not (getattr(args, "reader", None) or getattr(args, "card_file", None)):
        if not args.uid:
            raise registry.HallError("请给出卡片 UID，或用 --reader / --card-file 在发卡机上读卡",
                                     "give the card UID, or --reader / --card-file to read it at the issuing station")
        return None
    station = issuing_station(args)
    try:
        return station.StationCard(args.reader, args.card_file, args.uid)
    except station.StationError as error:
        raise registry.HallError(error.zh, error.en)


def issuing_station(args):
    """firmware/apps/issuing.py, handed in as `args.issuing_station` by the `ykt` command line: the
    server imports only the core (DESIGN.md section 6), and `python -m sync_server` runs on machines
    that carry no terminal code."""
    if getattr(args, "issuing_station", None) is None:
        raise registry.HallError("此命令行不带发卡机：请用 ykt hall 读写卡片，或只给出 --uid",
                                 "this command line has no issuing station: use `ykt hall`, or give --uid alone")
    return args.issuing_station()


def write_at_station(args, conn, station, identity, name):
    """Write the new card record onto the station's card; if the write is torn, void the number."""
    station_error = issuing_station(args).StationError
    try:
        station.write(keys.load_master_key(keys.master_key_path(data_dir_of(args))), identity, name)
    except station_error as error:
        registry.report_loss(conn, identity.card_number)       # a half-written card must never pay
        raise registry.HallError("%s；卡号 %d 已作废（挂失），请换一张空白卡重新办理" % (error.zh, identity.card_number),
                                 "%s; card %d is void (reported lost): use a new blank card and reissue"
                                 % (error.en, identity.card_number))


def add_station_options(parser):
    parser.add_argument("--uid", help="card UID, hex (without a station reader); with --card-file: UID of a new image")
    parser.add_argument("--reader", help="issuing station reader, e.g. pcsc:ACR122 or pn532:/dev/ttyUSB0: reads the "
                                         "blank card's UID and writes the card")
    parser.add_argument("--card-file", help="a virtual card image on the sim: reader (created blank if missing)")
