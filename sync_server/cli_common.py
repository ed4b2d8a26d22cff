"""What the `ykt server` / `ykt hall` commands share: the data directory, the output language, opening
the database, the issuing station's card, and carrying a hall card job (发卡/补卡任务) through.

sync_server/cli.py (server and core hall commands) and sync_server/services/hall_cli.py (the
cardholder-service commands) both build on these; neither imports the other's helpers.
"""
import argparse
import getpass
import os
import socket

from sync_server import db as dbmod, keys, messages, numbers, pg_store, private_dir, registry, services
from sync_server.mistakes import DeviceMistake, FileMistake, MalformedInput, NoCardYet, NotReady, UnknownRecord
from sync_server.services import card_jobs, cash_desk


def data_dir_of(args):
    return os.path.abspath(args.data_dir or os.environ.get("YKT_DATA_DIR", "./data"))


def lang_of(args):
    return "en" if (getattr(args, "lang", None) or messages.lang_from_env()).startswith("en") else "zh"


def say(args, zh, en):
    print(en if lang_of(args) == "en" else zh)


def data_dir_checked(args):
    """The data directory; FileMistake when it is a file."""
    data_dir = data_dir_of(args)
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise FileMistake("数据目录 %s 不是目录" % data_dir, "the data directory %s is not a directory" % data_dir)
    return data_dir


def open_database(args):
    """The data directory's database (or $YKT_DATABASE_URL's), upgraded; NotReady when `ykt server
    init` has not run, FileMistake when the data directory is a file."""
    data_dir = data_dir_checked(args)
    path = dbmod.store_location(data_dir)
    if not pg_store.is_postgresql(path) and not os.path.exists(path):
        raise NotReady("数据目录 %s 尚未初始化，请先运行 ykt server init --data-dir %s" % (data_dir, data_dir),
                       "data directory %s not initialised: run ykt server init --data-dir %s" % (data_dir, data_dir))
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
    except station.NoCard as error:
        raise NoCardYet(error.zh, error.en)
    except station.StationError as error:
        if isinstance(error.__context__, station.ReaderError):
            raise DeviceMistake(error.zh, error.en)
        raise registry.HallError(error.zh, error.en)
    except ValueError as error:          # a --card-file that is not a card image
        raise MalformedInput("卡片映像 %s 无效：%s" % (args.card_file, error),
                             "the card image %s is not valid: %s" % (args.card_file, error))


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


def add_person_options(parser, card=False):
    """--number (学工号, what people know), or with `card` the card number; --account (the internal
    id) still works for the scripts written before, but is no longer shown."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--number", help="the person's staff/student number (学工号)")
    if card:
        which.add_argument("--card", type=int, help="the card number instead of the staff/student number")
    which.add_argument("--account", type=int, help=argparse.SUPPRESS)
    return which


def account_of(conn, args):
    """The account named on the command line: by --number, --card (when the command has it) or
    --account; an unknown one is refused with exit code 6 (services' 404s)."""
    if getattr(args, "number", None) is not None:
        return cash_desk.account_of_number(conn, args.number)
    if getattr(args, "card", None) is not None:
        row = conn.execute("SELECT account_id FROM cards WHERE card_number = ? LIMIT 1", (args.card,)).fetchone()
        if row is None:
            raise UnknownRecord("卡号 %d 不存在" % args.card, "card %d does not exist" % args.card)
        return row[0]
    services.person_row(conn, args.account)
    return args.account


def operator_of(args):
    """Who acts at the command line: --operator, else the login name."""
    return getattr(args, "operator", None) or getpass.getuser()


def log_staff_action(conn, args, action, account_id, card_number=None, amount_fen=None, detail=None):
    """The staff action log's line for a `ykt hall` command, so the person's log on the hall pages
    shows what was done at the command line too (staff_user_id 0: a login name, not a web user).
    Runs in the caller's transaction when there is one, else in its own right after the change."""
    from sync_server.web import auth     # Flask: imported only by the commands that need it

    def insert(conn):
        person = conn.execute("SELECT person_id FROM accounts WHERE id = ?", (account_id,)).fetchone()
        auth.log_action(conn, {"id": 0, "username": operator_of(args)}, action,
                        person_id=person[0] if person else None, account_id=account_id, card_number=card_number,
                        amount_fen=amount_fen, detail=dict(detail or {}, via="cli"))
    if conn.in_transaction:
        insert(conn)
    else:
        with dbmod.transaction(conn):
            insert(conn)


def yuan_of(text, what_zh="金额", what_en="the amount"):
    """Fen from a yuan amount as people type it ("12.50"); MalformedInput for "12..5" and the like."""
    fen = numbers.parse_yuan(text or "", maximum_fen=10 ** 9)
    if fen is None:
        raise MalformedInput("%s %s 无效：应为元，最多两位小数，如 12.50" % (what_zh, (text or "")[:40]),
                             "%s %s is not valid: yuan with at most two decimals, like 12.50" % (what_en,
                                                                                              (text or "")[:40]))
    return fen


def station_name(args):
    """--station, else this machine's name: a restarted station finds the jobs it left half-written."""
    return card_jobs.check_station(getattr(args, "station", None) or socket.gethostname()[:card_jobs.MAX_STATION_CHARS])


def job_receipt(conn, job):
    """The staff action log line of a card job done (its receipt), in the name of the clerk who asked."""
    from sync_server.web import auth     # Flask: imported only by the commands that need it
    return auth.log_action(conn, {"id": job["requested_user_id"], "username": job["requested_by"]}, job["kind"],
                           person_id=job["person_id"], account_id=job["account_id"], card_number=job["card_number"],
                           detail={"job_id": job["id"], "generation": job["generation"], "uid": job["uid"],
                                   "fee_fen": job["fee_fen"], "fee_source": job["fee_source"],
                                   "station": job["claimed_by"], "attempts": job["attempts"]})


def carry_card_job(args, conn, job, fee_source=None):
    """`ykt hall card-issue / reissue` on an account the hall page asked a card for: that job, carried
    through here (its fee booked once, whoever books it). Returns (job, identity, name, uid, written)."""
    name = station_name(args)
    if job["status"] == "writing":
        if job["claimed_by"] != name:
            raise registry.HallError("发卡任务 #%d 正在发卡机 %s 上写卡，请稍候" % (job["id"], job["claimed_by"]),
                                     "card job #%d is being written at station %s: wait for it"
                                     % (job["id"], job["claimed_by"]))
        card_jobs.recover(conn, name)                   # this machine stopped mid-write: that card is void
        job = card_jobs.get(conn, job["id"])
    if job["status"] == "failed":
        job = card_jobs.retry(conn, job["id"], fee_source)
    station = open_station(args)
    desk = card_jobs.StationDesk(conn, name, receipt=job_receipt)
    try:
        uid = station.uid if station is not None else uid_of(args)
        identity, holder_name = desk.claim(job["id"], uid)
        if station is not None:
            try:
                station.write(keys.load_master_key(keys.master_key_path(data_dir_of(args))), identity, holder_name)
            except issuing_station(args).StationError as error:
                failed = desk.torn(job["id"], error.zh, error.en)
                raise registry.HallError(failed["reason_zh"], failed["reason_en"])
        job = desk.written(job["id"])
    finally:
        if station is not None:
            station.close()
    return job, identity, holder_name, uid, station is not None


def uid_of(args):
    try:
        return bytes.fromhex(args.uid)
    except ValueError:
        raise MalformedInput("卡片 UID 应为十六进制：%s" % args.uid[:40], "the card UID is hex: %s" % args.uid[:40])


def read_text_file(path, max_chars):
    """A UTF-8 text file people hand over (a CSV export), at most `max_chars` (the caller refuses a
    longer one); one that is not UTF-8 is malformed input (exit code 7), a missing one exit code 4."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read(max_chars)
    except UnicodeDecodeError as error:
        raise MalformedInput("文件 %s 不是 UTF-8 文本（第 %d 字节）：请另存为 UTF-8 的 CSV" % (path, error.start),
                             "%s is not UTF-8 text (byte %d): save it as a UTF-8 CSV" % (path, error.start))


def print_table(args, headers, rows, right=()):
    """A table whose columns line up with Chinese text (rich measures East Asian width). `headers`
    are (zh, en) pairs, `right` the indexes of right-aligned (number) columns. On a terminal it is
    drawn with a header rule; piped, it is plain aligned text without colour or wrapping, one row a
    line, for `grep` and `awk` (`--json` is the form for programs)."""
    import io
    import sys

    from rich import box
    from rich.console import Console
    from rich.table import Table
    terminal = sys.stdout.isatty()
    en = lang_of(args) == "en"
    table = Table(box=box.SIMPLE_HEAD if terminal else None, show_edge=False, pad_edge=False,
                  header_style="bold" if terminal else None)
    for index, (zh, english) in enumerate(headers):
        table.add_column(english if en else zh, justify="right" if index in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*["" if value is None else str(value) for value in row])
    buffer = io.StringIO()
    Console(file=buffer, width=100000, force_terminal=terminal, color_system="standard" if terminal else None,
            markup=False, highlight=False, emoji=False).print(table)
    for line in buffer.getvalue().splitlines():
        print(line.rstrip())


def require_known(conn, sql, parameters, zh, en):
    """The row `sql` finds, or UnknownRecord (exit code 6) with the message naming what is unknown:
    the command line checks a number people typed before it changes anything."""
    row = conn.execute(sql, parameters).fetchone()
    if row is None:
        raise UnknownRecord(zh, en)
    return row


def check_output_file(path):
    """Refuse, before anything is booked, an output file that cannot be written where it is asked
    for: its folder missing or not a folder, or the path itself a folder (exit code 4)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FileMistake("%s 是一个目录，请给出文件名" % path, "%s is a directory: give a file name" % path)
    if not os.path.isdir(folder):
        raise FileMistake("目录不存在：%s" % folder, "no such folder: %s" % folder)
    if not os.access(folder, os.W_OK):
        raise FileMistake("目录 %s 不可写" % folder, "the folder %s is not writable" % folder)
