"""`ykt phone`: a cardholder's phone for developers and tests - bind, balance, and 扫码用水.

    ykt phone bind --server URL --name 张三 --staff-number S2024001 --pin 123456
    ykt phone balance
    ykt phone water --ble tcp-client:127.0.0.1:PORT --sticker sticker.png --seconds 5
    ykt phone water --ble bleak --nearby [--dispenser 7] --until-enter
    ykt phone paycode enable --pin 147258        付款码: this phone's key certified (a PIN changed from the initial one)
    ykt phone paycode show [--png code.png] [--offline] [--json]
    ykt phone paycode paid | stop

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

from sync_server import mistakes

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
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"),
                        help="language of messages (default $YKT_LANG, else zh)")
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
    code = commands.add_parser("paycode", help="付款码 / the payment code")
    code_steps = code.add_subparsers(dest="paycode_step", metavar="STEP")
    code_steps.required = True
    enable = code_steps.add_parser("enable", help="开通付款码 / enable: a key pair made here, certified by the server")
    enable.add_argument("--pin", required=True, help="交易密码 / the card PIN (not the initial one)")
    enable.set_defaults(handler=_paycode_enable)
    show = code_steps.add_parser("show", help="出示付款码 / show the code (text, QR on the terminal, or a PNG)")
    show.add_argument("--png", help="also write the QR code to this PNG (what the screen shows)")
    show.add_argument("--offline", action="store_true", help="no network: the code from the credential alone")
    show.add_argument("--json", action="store_true", help="one JSON line: the code and what it holds")
    show.set_defaults(handler=_paycode_show)
    paid = code_steps.add_parser("paid", help="刷新 / the code was used: move on to the next one")
    paid.set_defaults(handler=_paycode_paid)
    stop_code = code_steps.add_parser("stop", help="停用付款码 / stop the code on this phone")
    stop_code.set_defaults(handler=_paycode_stop)


def _say(args, zh, en):
    return en if args.lang == "en" else zh


def _read_profile(args):
    try:
        with open(args.profile, encoding="utf-8") as handle:
            profile = json.load(handle)
        if not isinstance(profile, dict):
            raise ValueError("not a JSON object")
        return profile
    except FileNotFoundError:
        args.exit_code = mistakes.EXIT_NOT_READY
        print(_say(args, "尚未绑卡，请先运行 ykt phone bind", "not bound yet: run `ykt phone bind` first"), file=sys.stderr)
    except (OSError, ValueError) as error:
        args.exit_code = mistakes.EXIT_MALFORMED if isinstance(error, ValueError) else mistakes.EXIT_FILE
        print(_say(args, "手机配置文件无效：%s" % error, "bad phone profile: %s" % error), file=sys.stderr)
    return None


def _profile_refused(args):
    """The exit code of a profile _read_profile / _load could not use (sync_server/mistakes.py): 9 not
    bound yet, 4 unreadable, 7 not a profile."""
    return getattr(args, "exit_code", None) or _EXIT_REFUSED


def _write_profile(path, profile):
    """The profile holds the token and the pay-code key: only its owner may read it, and a crash while
    writing never leaves half of it (a new file, then renamed over the old)."""
    temporary = path + ".new"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(profile, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _load(args):
    profile = _read_profile(args)
    if profile is None:
        return None
    from simulators.phone import PhoneApp
    try:
        app = PhoneApp(profile["server"], profile["app_user_id"])
        app.token, app.account_id = profile["token"], profile["account_id"]
    except (KeyError, TypeError) as error:
        args.exit_code = mistakes.EXIT_MALFORMED
        print(_say(args, "手机配置文件无效：缺少 %s，请重新绑卡" % error, "bad phone profile: %s missing; bind again"
                   % error), file=sys.stderr)
        return None
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
        return mistakes.EXIT_NOT_READY
    finally:
        app.close()
    profile = {"server": args.server, "app_user_id": app.app_user_id, "token": answer["token"],
               "account_id": answer["account_id"]}
    _write_profile(args.profile, profile)
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
        return _profile_refused(args)
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
        return _profile_refused(args)
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


# -- 付款码 ------------------------------------------------------------------------------------------------

def _wallet(args, profile):
    from simulators.phone_paycode import PayCodeWallet
    saved = profile.get("paycode")
    if not saved:
        print(_say(args, "尚未开通付款码，请先运行 ykt phone paycode enable",
                   "the payment code is not enabled: run `ykt phone paycode enable` first"), file=sys.stderr)
        return None
    return PayCodeWallet.from_dict(saved)


def _paycode_call(args, step):
    """Run step(app, profile) against the server; the refusal in the user's language, no traceback."""
    from simulators.phone import PhoneError
    profile = _read_profile(args)
    app = _load(args) if profile is not None else None
    if app is None:
        return _profile_refused(args)
    try:
        return step(app, profile)
    except PhoneError as error:
        print(_message(error), file=sys.stderr)
        return _EXIT_REFUSED
    except OSError as error:            # httpx's connection errors are OSErrors underneath
        print(_say(args, "无法连接服务器：%s", "cannot reach the server: %s") % error, file=sys.stderr)
        return mistakes.EXIT_NOT_READY
    finally:
        app.close()


def _paycode_enable(args):
    import httpx
    from simulators.phone_paycode import PayCodeWallet

    def step(app, profile):
        wallet = PayCodeWallet.create()
        try:
            wallet.enable(app, args.pin)
        except httpx.HTTPError as error:
            print(_say(args, "无法连接服务器：%s", "cannot reach the server: %s") % error, file=sys.stderr)
            return _EXIT_REFUSED
        profile["paycode"] = wallet.to_dict()
        _write_profile(args.profile, profile)
        print(_say(args, "付款码已开通（凭证 %d，脱机额度 %s 元）" % (wallet.credential_id, _yuan(
            _cert(wallet).offline_cap_fen)), "payment code enabled (credential %d, offline cap %s yuan)" % (
            wallet.credential_id, _yuan(_cert(wallet).offline_cap_fen))))
        return 0
    return _paycode_call(args, step)


def _cert(wallet):
    from firmware.core import paycode
    return paycode.parse_cert(wallet.certificate)


def _yuan(fen):
    return "%d.%02d" % (fen // 100, fen % 100)


def _paycode_show(args):
    profile = _read_profile(args)
    if profile is None:
        return _profile_refused(args)
    wallet = _wallet(args, profile)
    if wallet is None:
        return _EXIT_REFUSED
    if not args.offline:
        import httpx
        from simulators.phone import PhoneError
        app = _load(args)
        try:
            uses = wallet.refresh(app)      # past any code used meanwhile; an old certificate renewed
            for use in uses[:1]:
                print(_say(args, "最近一笔：%s 元" % _yuan(use["amount_fen"]),
                           "last payment: %s yuan" % _yuan(use["amount_fen"])), file=sys.stderr)
        except (PhoneError, httpx.HTTPError, OSError):
            print(_say(args, "网络不可用，使用离线付款码", "no network: showing the offline code"), file=sys.stderr)
        finally:
            app.close()
        profile["paycode"] = wallet.to_dict()
        _write_profile(args.profile, profile)
    text = wallet.code()
    import segno
    qr = segno.make(text, error="m", mode="alphanumeric", micro=False)
    if args.png:
        try:
            qr.save(args.png, scale=6, border=4)
        except OSError as error:
            print(_say(args, "无法写入图片：%s", "cannot write the picture: %s") % error, file=sys.stderr)
            return mistakes.EXIT_FILE
    if args.json:
        from firmware.core import paycode
        code = paycode.parse(text)
        print(json.dumps({"code": text, "credential_id": wallet.credential_id, "time_step": code.time_step,
                          "counter": code.counter, "qr_version": qr.version, "png": args.png}, sort_keys=True))
    else:
        print(_say(args, "付款码（每分钟刷新，向收银员出示）：", "payment code (changes every minute; show it at "
                   "the till):"))
        qr.terminal(compact=True)
        print(text)
    return 0


def _paycode_paid(args):
    profile = _read_profile(args)
    if profile is None:
        return _profile_refused(args)
    wallet = _wallet(args, profile)
    if wallet is None:
        return _EXIT_REFUSED
    wallet.used()
    profile["paycode"] = wallet.to_dict()
    _write_profile(args.profile, profile)
    print(_say(args, "已刷新付款码", "moved on to the next code"))
    return 0


def _paycode_stop(args):
    def step(app, profile):
        wallet = _wallet(args, profile)
        if wallet is None:
            return _EXIT_REFUSED
        app.paycode_stop(wallet.credential_id)
        del profile["paycode"]
        _write_profile(args.profile, profile)
        print(_say(args, "付款码已停用", "payment code stopped"))
        return 0
    return _paycode_call(args, step)
