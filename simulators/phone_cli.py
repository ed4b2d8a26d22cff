"""`ykt phone`: a cardholder's phone for developers and tests - bind, balance, and 扫码用水.

    ykt phone bind --server URL --name 张三 --staff-number S2024001 --pin 123456
    ykt phone balance
    ykt phone water --ble tcp-client:127.0.0.1:PORT --sticker sticker.png --seconds 5
    ykt phone water --ble bleak --nearby [--dispenser 7] --until-enter

The binding (server URL, token, account) is kept in a profile file only its owner can read
(--profile, default ./ykt-phone.json). Bluetooth runs over bumble or bleak. A bumble transport
(`simulators/phone_ble.py`) is the simulated air's `tcp-client:` (`python -m simulators.ble_air`) or
an adapter bumble takes for itself (`hci-socket:0` with BlueZ kept off it, `usb:0`). `bleak` or
`bleak:hci1` (`simulators/phone_bleak.py`) is the operating system's own stack through bleak: BlueZ
on Linux, over the system D-Bus (in tests `simulators/bluez_air.py` on a private bus, named by
DBUS_SYSTEM_BUS_ADDRESS). The water session (`simulators/phone_water.py`) is the same on either.
"""
import asyncio
import json
import os
import re
import sys
import uuid

_EXIT_REFUSED = 2
DEFAULT_PROFILE = "ykt-phone.json"
MAX_SECONDS = 600
_BLEAK = re.compile(r"bleak(:(?P<adapter>hci[0-9]{1,3}))?")


def register(subparsers):
    parser = subparsers.add_parser(
        "phone", help="手机模拟器：绑卡、余额、扫码用水 / phone simulator: bind, balance, Bluetooth water",
        description="开发和测试用的持卡人手机：绑卡、查询余额、扫码或搜索附近开水机用水。/ a cardholder's phone for "
                    "developers and tests: bind, balance, and water from a dispenser found by its sticker or nearby.",
        epilog="示例 / examples:  ykt phone bind --server http://127.0.0.1:8080 --name 张三 --staff-number S1 "
               "--pin 123456   |   ykt phone water --ble tcp-client:127.0.0.1:9001 --nearby --seconds 5   |   "
               "ykt phone water --ble bleak --sticker sticker.png")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help="where the binding is kept (default %s)"
                        % DEFAULT_PROFILE)
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"))
    commands = parser.add_subparsers(dest="phone_command", metavar="STEP")
    commands.required = True
    bind = commands.add_parser("bind", help="绑卡 / bind this phone to a cardholder")
    bind.add_argument("--server", required=True, help="the server's URL")
    bind.add_argument("--name", required=True, help="姓名 / name")
    bind.add_argument("--staff-number", required=True, help="学工号 / staff or student number")
    bind.add_argument("--pin", required=True, help="交易密码 / the card PIN")
    bind.set_defaults(handler=_bind)
    balance = commands.add_parser("balance", help="余额 / balances")
    balance.set_defaults(handler=_balance)
    water = commands.add_parser("water", help="扫码用水 / draw water from a dispenser over Bluetooth")
    water.add_argument("--ble", required=True, metavar="TRANSPORT",
                       help="手机蓝牙 / the phone's Bluetooth: a bumble transport (tcp-client:HOST:PORT of the "
                            "simulated air, hci-socket:0, usb:0), or bleak[:hciN] for the system's own stack through "
                            "bleak (BlueZ on Linux, over the system D-Bus or DBUS_SYSTEM_BUS_ADDRESS)")
    found = water.add_mutually_exclusive_group(required=True)
    found.add_argument("--sticker", metavar="PNG", help="扫码连接：开水机上二维码的照片 / a photo of the sticker")
    found.add_argument("--nearby", action="store_true", help="搜索附近的设备 / search for dispensers nearby")
    water.add_argument("--dispenser", type=int, help="with --nearby: this dispenser id (default: the nearest)")
    stop = water.add_mutually_exclusive_group()
    stop.add_argument("--seconds", type=float, default=5.0, help="press End after this long (default 5)")
    stop.add_argument("--until-enter", action="store_true", help="press End when Enter is pressed")
    water.add_argument("--walk-away", action="store_true", help="leave without pressing End (the link drops)")
    water.add_argument("--json", action="store_true", help="end with one JSON line")
    water.set_defaults(handler=_water)


def _say(args, zh, en):
    return en if args.lang == "en" else zh


def _load(args):
    try:
        with open(args.profile, encoding="utf-8") as handle:
            profile = json.load(handle)
    except FileNotFoundError:
        print(_say(args, "尚未绑卡，请先运行 ykt phone bind", "not bound yet: run `ykt phone bind` first"), file=sys.stderr)
        return None
    except (OSError, ValueError) as error:
        print(_say(args, "手机配置文件无效：%s" % error, "bad phone profile: %s" % error), file=sys.stderr)
        return None
    from simulators.phone import PhoneApp
    app = PhoneApp(profile["server"], profile["app_user_id"])
    app.token, app.account_id = profile["token"], profile["account_id"]
    return app


def _bind(args):
    from simulators.phone import PhoneApp, PhoneError
    app = PhoneApp(args.server, "ykt-phone-%s" % uuid.uuid4().hex[:12])
    try:
        answer = app.bind(args.name, args.staff_number, args.pin)
    except PhoneError as error:
        print(_say(args, "绑卡失败：", "binding refused: ") + _message(error), file=sys.stderr)
        return _EXIT_REFUSED
    except Exception as error:          # the server is not there: httpx says how
        print(_say(args, "无法连接服务器：%s", "cannot reach the server: %s") % error, file=sys.stderr)
        return _EXIT_REFUSED
    finally:
        app.close()
    profile = {"server": args.server, "app_user_id": app.app_user_id, "token": answer["token"],
               "account_id": answer["account_id"]}
    descriptor = os.open(args.profile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(profile, handle)
    print(_say(args, "绑卡成功，账户 %d" % answer["account_id"], "bound to account %d" % answer["account_id"]))
    return 0


def _message(error):
    try:
        return json.loads(error.body)["message"]
    except (ValueError, KeyError, TypeError):
        return str(error)


def _balance(args):
    from simulators.phone import PhoneError
    app = _load(args)
    if app is None:
        return _EXIT_REFUSED
    try:
        balance = app.balance()
    except PhoneError as error:
        print(_message(error), file=sys.stderr)
        return _EXIT_REFUSED
    finally:
        app.close()
    names = {"main": ("主钱包", "main"), "water": ("热水钱包", "water"), "legacy": ("原系统余额", "old system")}
    for wallet, fen in sorted(balance["wallets"].items()):
        label = names.get(wallet, (wallet, wallet))[1 if args.lang == "en" else 0]
        print("%s\t%d.%02d" % (label, fen // 100, fen % 100))
    return 0


def _water(args):
    from simulators.phone import PhoneError
    from simulators.phone_ble import PhoneBleError
    if not 0 < args.seconds <= MAX_SECONDS:
        print(_say(args, "--seconds 须在 0 到 %d 之间" % MAX_SECONDS, "--seconds must be 0 to %d" % MAX_SECONDS),
              file=sys.stderr)
        return _EXIT_REFUSED
    if args.ble.startswith("bleak") and not _BLEAK.fullmatch(args.ble):
        print(_say(args, "--ble 应为 bleak 或 bleak:hciN", "--ble takes bleak or bleak:hciN, not %r" % args.ble),
              file=sys.stderr)
        return _EXIT_REFUSED
    app = _load(args)
    if app is None:
        return _EXIT_REFUSED
    try:
        result = asyncio.run(_water_session(args, app))
    except (PhoneBleError, PhoneError) as error:
        text = _message(error) if isinstance(error, PhoneError) else str(error)
        print(_say(args, "用水失败：", "water failed: ") + text, file=sys.stderr)
        return _EXIT_REFUSED
    except ValueError as error:         # the sticker did not scan
        print(str(error), file=sys.stderr)
        return _EXIT_REFUSED
    finally:
        app.close()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, sort_keys=True))
    return 0


def _radio(spec):
    """The phone's radio for --ble: bleak (the system's stack, BlueZ on Linux) for `bleak[:hciN]`, else
    bumble on that transport. Both offer the same scan, connect and link (phone_ble's interface)."""
    bleak = _BLEAK.fullmatch(spec)
    if bleak is not None:
        from simulators.phone_bleak import PhoneRadio
        return PhoneRadio(bleak.group("adapter"))
    from simulators.phone_ble import PhoneRadio
    return PhoneRadio(spec)


async def _water_session(args, app):
    from simulators.phone_water import WaterSession, dispenser_from_sticker

    async with _radio(args.ble) as radio:
        if args.sticker:
            dispenser_id, address = dispenser_from_sticker(args.sticker)
            # a board that cannot take the address the sticker names (MicroPython's stack sets its own)
            # is found by the id it advertises instead; nothing heard: try the sticker's address
            heard = await radio.scan_nearby(dispenser_id=dispenser_id)
            if heard and all(nearby.address != address for nearby in heard):
                address = heard[0].address
        else:
            nearby = await radio.find(args.dispenser)
            dispenser_id, address = nearby.dispenser_id, nearby.address
        print(_say(args, "连接开水机 %d（%s）……" % (dispenser_id, address),
                   "connecting to dispenser %d (%s)..." % (dispenser_id, address)), file=sys.stderr)

        def shown(note):
            print("  %d ml  %d.%02d / %d.%02d" % (note.ml, note.fen // 100, note.fen % 100, note.cap_fen // 100,
                                                  note.cap_fen % 100), file=sys.stderr)

        link = await radio.connect(address, on_progress=shown)
        session = WaterSession(app, link)
        cap_fen = await session.start()
        print(_say(args, "出水中（本次最多 %d.%02d 元）" % (cap_fen // 100, cap_fen % 100),
                   "water flowing (at most %d.%02d yuan this time)" % (cap_fen // 100, cap_fen % 100)),
              file=sys.stderr)
        if args.until_enter:
            await asyncio.to_thread(sys.stdin.readline)
        else:
            await asyncio.sleep(args.seconds)
        result = {"dispenser_id": dispenser_id, "grant_id": session.grant["grant_id"], "cap_fen": cap_fen,
                  "start_s": round(session.timings_s["start"], 4)}
        if args.walk_away:
            await session.walk_away()
            result["walked_away"] = True
            print(_say(args, "已离开，开水机会自行结算", "walked away: the dispenser settles by itself"),
                  file=sys.stderr)
            return result
        receipt = await session.end()
        await link.disconnect()
        result.update({"ml": receipt.ml, "fen": receipt.fen, "outcome": session.settlement["outcome"]})
        print(_say(args, "用水 %d 毫升，扣款 %d.%02d 元" % (receipt.ml, receipt.fen // 100, receipt.fen % 100),
                   "drew %d ml, charged %d.%02d yuan" % (receipt.ml, receipt.fen // 100, receipt.fen % 100)))
        return result
