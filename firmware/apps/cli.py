"""`ykt terminal`: run a canteen POS terminal (the shell in firmware/apps/pos_terminal.py).

    ykt terminal --provision F --data-dir D [--reader sim:] [--script taps.jsonl | --script -]
                 [--serve --keypad evdev:/dev/input/... --face 8800]
                 [--scanner serial:/dev/ttyACM0 | evdev:/dev/input/...]
                 [--server-url URL] [--drain-timeout-s S] [--decisions-only] [--no-sync]

    ykt dispenser --provision F --data-dir D [--reader sim:] [--pins gpio|mock] [--ble hci-socket:0]
                  [--script taps.jsonl | --script -] [--serve] [--virtual-clock]

    ykt activation --provision F --data-dir D [--reader sim:] [--voice aplay|off|DIR] [--serve]
                   [--script taps.jsonl | --script -] [--server-url URL] [--drain-timeout-s S]

`ykt card readers | uid | info | dump` (firmware/apps/card_tool.py) is the technicians' card tool.

Messages are Chinese first; `--lang en` (or YKT_LANG=en) switches them to English. A mistake is one
line on stderr and the exit code of its kind, the table of sync_server/mistakes.py (`ykt --help`);
the terminal side does not import the server, so the few codes it uses are repeated here, and
tests/test_mistakes.py checks that they agree.
"""
import io
import os
import select
import sys

_EXIT_REFUSED = 2
_EXIT_FILE = 4
_EXIT_DEVICE = 5
_EXIT_MALFORMED = 7


def register(subparsers):
    parser = subparsers.add_parser(
        "terminal", help="运行消费机终端 / run a canteen POS terminal",
        description="消费机终端：读卡、脱机决策、本地记账、后台同步 / canteen POS: read cards, decide offline, "
                    "journal locally, sync in the background")
    parser.add_argument("--provision", required=True, help="provisioning JSON from `ykt hall terminal-register`")
    parser.add_argument("--data-dir", required=True, help="where the terminal keeps its SQLite journal")
    parser.add_argument("--reader", default="sim:", help="reader URL: sim:, pn532:/dev/ttyS0, pcsc:ACR122, nfcpy:usb")
    parser.add_argument("--script", help="JSON lines of taps (a file, or - for stdin); default: stdin")
    parser.add_argument("--scanner", help="payment-code scanner: serial:/dev/ttyACM0 (line scanner, any pyserial URL) "
                                          "or evdev:/dev/input/... (keyboard wedge); script lines {\"scan\": true} "
                                          "wait for it")
    parser.add_argument("--cards-dir", help="where card images named <uid>.card live (sim: reader)")
    parser.add_argument("--serve", action="store_true",
                        help="after the script (if any), serve the counter until stopped: keys from --keypad and "
                             "the screen's buttons, cards from the reader, codes from --scanner")
    parser.add_argument("--keypad", metavar="evdev:/dev/input/...",
                        help="the cashier's USB numeric keypad or keyboard: digits and . key an amount, Enter (or "
                             "keypad +) confirms, Backspace corrects, Esc/Del (or keypad -) cancels, F1-F12 pick "
                             "dishes; the cardholder's PIN is typed here and never shown or logged")
    _add_face_option(parser)
    _add_beeper_option(parser)
    parser.add_argument("--voice", default="off",
                        help="say each accepted payment (交易成功 消费…元 余额…元): aplay through the sound card "
                             "(espeak-ng Mandarin, each sentence made once and cached); off (default): silent; "
                             "a directory: write what is spoken there as WAV files (tests)")
    parser.add_argument("--server-url", help="override the server URL of the provisioning file")
    parser.add_argument("--sync-interval-ms", type=int, help="default: the server's configuration")
    parser.add_argument("--drain-timeout-s", type=float, default=0.0,
                        help="after the script, sync until nothing is unacknowledged (at most this long)")
    parser.add_argument("--decisions-only", action="store_true", help="print only decision lines")
    parser.add_argument("--no-sync", action="store_true", help="never contact the server (bench use)")
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"),
                        help="language of the display and messages (default $YKT_LANG, else zh)")
    parser.set_defaults(handler=run_terminal)

    _register_dispenser(subparsers)
    _register_activation(subparsers)
    from firmware.apps import card_tool      # `ykt card ...`: readers, uid, info, dump for technicians
    card_tool.register(subparsers)


def _register_dispenser(subparsers):
    parser = subparsers.add_parser(
        "dispenser", help="运行开水机终端 / run a water dispenser",
        description="开水机：刷卡或手机蓝牙授权出水，按水量计费，本地记账、后台同步。/ water dispenser: a card tap or a "
                    "phone's Bluetooth grant opens the valve, water is charged by volume, journaled locally and "
                    "synced in the background.",
        epilog="示例 / examples:  ykt dispenser --provision water-7.json --data-dir /var/lib/ykt --reader "
               "pn532:/dev/ttyS0 --ble hci-socket:0 --serve   |   ykt dispenser --provision w.json --data-dir d "
               "--pins mock --flow-ml-per-s 80 --virtual-clock --script session.jsonl")
    parser.add_argument("--provision", required=True, help="provisioning JSON of a water terminal "
                                                           "(`ykt hall terminal-register` under a water merchant)")
    parser.add_argument("--data-dir", required=True, help="where the dispenser keeps its SQLite journal")
    parser.add_argument("--reader", default="sim:", help="reader URL: sim:, pn532:/dev/ttyS0, pcsc:ACR122, nfcpy:usb")
    parser.add_argument("--pins", choices=("gpio", "mock"), default="gpio",
                        help="gpio: the Pi's pins through gpiozero; mock: gpiozero's mock pins with a simulated "
                             "flow meter (development, tests, the demo)")
    parser.add_argument("--valve-pin", type=int, default=17, help="BCM pin of the valve relay (default 17)")
    parser.add_argument("--meter-pin", type=int, default=27, help="BCM pin of the flow meter (default 27)")
    parser.add_argument("--flow-ml-per-s", type=float, default=60.0,
                        help="--pins mock: how fast the simulated water runs while the valve is open (default 60)")
    parser.add_argument("--ble", default="none", metavar="TRANSPORT",
                        help="Bluetooth LE for phones: hci-socket:0 on a Pi, tcp-client:HOST:PORT of `python -m "
                             "simulators.ble_air`, or none (default)")
    parser.add_argument("--script", help="JSON lines to run (a file, or - for stdin); see "
                                         "firmware/apps/dispenser_terminal.py")
    parser.add_argument("--serve", action="store_true", help="after the script (if any), keep serving taps and "
                                                             "phones until stopped")
    parser.add_argument("--virtual-clock", action="store_true",
                        help="time moves only with the script's advance_ms (scripted runs; no ticking thread)")
    parser.add_argument("--server-url", help="override the server URL of the provisioning file")
    parser.add_argument("--sync-interval-ms", type=int, help="default: the server's configuration")
    parser.add_argument("--drain-timeout-s", type=float, default=0.0,
                        help="at the end, sync until nothing is unacknowledged (at most this long)")
    parser.add_argument("--no-sync", action="store_true", help="never contact the server (bench use)")
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"),
                        help="language of the display and messages (default $YKT_LANG, else zh)")
    _add_face_option(parser)
    _add_beeper_option(parser)
    parser.set_defaults(handler=run_dispenser)


def _provisioning(path, load_provisioning):
    """(the terminal's provisioning document, None), or (None, exit code) after a one-line error."""
    try:
        return load_provisioning(path), None
    except OSError as error:
        print("无法读取终端配置文件 / cannot read the provisioning file %s: %s" % (path, error.strerror or error),
              file=sys.stderr)
        return None, _EXIT_FILE
    except ValueError as error:
        print("终端配置文件无效 / bad provisioning file: %s" % error, file=sys.stderr)
        return None, _EXIT_MALFORMED


def _data_dir_problem(path):
    """The exit code after a one-line error when the journal's directory cannot be one, else None."""
    if os.path.exists(path) and not os.path.isdir(path):
        print("数据目录 %s 不是目录 / the data directory %s is not a directory" % (path, path), file=sys.stderr)
        return _EXIT_FILE
    return None


def _run_script(terminal, script):
    """Scripted lines from a file, or from stdin for "-"."""
    if script == "-":
        terminal.run_script(_stdin_lines(terminal.leaving_for_update))
        return
    with open(script, encoding="utf-8") as stream:
        terminal.run_script(stream)


def _stdin_lines(leaving, poll_s=0.2):
    """Standard input a line at a time, never read ahead of the line being run: a terminal that
    leaves for a firmware update under the slots' supervisor (`leaving()` true, checked while no line
    is waiting) leaves every later line in the pipe, where the new version, started with the same
    standard input, takes it up. Nothing fed is lost."""
    raw = io.FileIO(sys.stdin.fileno(), "rb", closefd=False)
    while True:
        ready, _, _ = select.select([raw], [], [], poll_s)
        if not ready:
            if leaving():
                return
            continue
        line = raw.readline()           # a raw file's readline reads byte by byte: nothing buffered
        if not line:
            return
        yield line.decode("utf-8")


def _register_activation(subparsers):
    parser = subparsers.add_parser(
        "activation", help="运行卡片激活机 / run a card activation unit",
        description="卡片激活机：刷原校园卡，读出旧卡余额并锁定旧钱包，写入新系统卡片信息，语音提示"
                    "「卡片激活中，请勿移开卡片」「卡片激活成功」。/ activation unit: tap an old campus card; its old "
                    "balances are read and locked, the new card identity is written, with the spoken prompts.",
        epilog="示例 / examples:  ykt activation --provision act-1.json --data-dir /var/lib/ykt --reader "
               "pn532:/dev/ttyS0 --voice aplay --serve   |   ykt activation --provision a.json --data-dir d "
               "--voice off --script taps.jsonl --drain-timeout-s 10")
    parser.add_argument("--provision", required=True, help="provisioning JSON of an activation unit (`ykt hall "
                                                           "terminal-register` under an activation merchant, "
                                                           "category 4, after `ykt hall migration-import --old-keys`)")
    parser.add_argument("--data-dir", required=True, help="where the unit keeps its journal and ticket cache")
    parser.add_argument("--reader", default="sim:", help="reader URL: sim:, pn532:/dev/ttyS0, pcsc:ACR122, nfcpy:usb")
    parser.add_argument("--voice", default="aplay",
                        help="aplay: speak through the sound card (espeak-ng Mandarin); off: silent; a directory: "
                             "write what is spoken there as WAV files (tests)")
    parser.add_argument("--script", help="JSON lines of taps (a file, or - for stdin); see "
                                         "firmware/apps/activation_terminal.py")
    parser.add_argument("--serve", action="store_true", help="after the script (if any), keep activating cards "
                                                             "until stopped")
    parser.add_argument("--cards-dir", help="where card images named <uid>.card live (sim: reader)")
    parser.add_argument("--server-url", help="override the server URL of the provisioning file")
    parser.add_argument("--sync-interval-ms", type=int, help="default: the server's configuration")
    parser.add_argument("--drain-timeout-s", type=float, default=0.0,
                        help="at the end, sync until nothing is unacknowledged (at most this long)")
    parser.add_argument("--decisions-only", action="store_true", help="print only decision lines")
    parser.add_argument("--no-sync", action="store_true", help="never contact the server (bench use)")
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"),
                        help="language of the display and messages (default $YKT_LANG, else zh)")
    _add_face_option(parser)
    _add_beeper_option(parser)
    parser.set_defaults(handler=run_activation)


def _add_beeper_option(parser):
    parser.add_argument("--beeper", help="the buzzer's pin through gpiozero, e.g. GPIO18 (mock:GPIO18: gpiozero's "
                                         "mock pins): one short beep accepted, three short refused, two long for "
                                         "the cashier")


def _open_beeper(args):
    """(firmware.apps.beeper.Beeper or None, None), or (None, exit code) after a clear error."""
    if not args.beeper:
        return None, None
    from firmware.apps.beeper import open_beeper
    try:
        return open_beeper(args.beeper), None
    except Exception as error:       # gpiozero says BadPinFactory / PinInvalidPin etc. off a Pi
        print("无法打开蜂鸣器引脚 / cannot open the beeper pin %s (%s): %s; off a Raspberry Pi use mock:%s"
              % (args.beeper, type(error).__name__, error, args.beeper), file=sys.stderr)
        return None, _EXIT_DEVICE


def _open_voice(args):
    """(firmware.apps.voice.Voice or None for --voice off, None), or (None, exit code) after a clear
    error (espeak-ng or its Mandarin voice missing); its WAV cache lives in the data directory."""
    if args.voice == "off":
        return None, None
    from firmware.apps.voice import Voice, VoiceUnavailable
    try:
        return Voice(os.path.join(args.data_dir, "voice"), args.voice, lang=args.lang), None
    except VoiceUnavailable as error:
        print(str(error), file=sys.stderr)
        return None, _EXIT_DEVICE


def run_activation(args):
    import contextlib
    import signal
    import threading

    from firmware.apps.activation_terminal import ActivationTerminal
    from firmware.apps.pos_terminal import load_provisioning
    from reader_drivers.base import open_reader

    provisioning, refused = _provisioning(args.provision, load_provisioning)
    refused = refused or _data_dir_problem(args.data_dir)
    if refused:
        return refused
    voice, refused = _open_voice(args)
    if refused:
        return refused
    from reader_drivers.base import ReaderError
    try:
        reader = open_reader(args.reader)
    except (ReaderError, OSError, ValueError) as error:
        print("无法打开读卡器 / cannot open the reader %s: %s" % (args.reader, error), file=sys.stderr)
        return _EXIT_DEVICE
    beeper, refused = _open_beeper(args)
    if refused:
        reader.close()
        return refused
    screens = contextlib.ExitStack()
    face, refused = _open_face(args, "activation", provisioning, screens)
    if refused:
        _release(reader, beeper)
        return refused
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        terminal = ActivationTerminal(provisioning, args.data_dir, reader, lang=args.lang,
                                      display=not args.decisions_only, sync=not args.no_sync,
                                      server_url=args.server_url, cards_dir=args.cards_dir,
                                      sync_interval_ms=args.sync_interval_ms, voice=voice, beeper=beeper, face=face)
    except ValueError as error:
        print("激活机无法启动 / the activation unit cannot start: %s" % error, file=sys.stderr)
        _release(screens, reader, beeper)
        return _EXIT_REFUSED
    try:
        terminal.start_sync()
        if args.script:
            _run_script(terminal, args.script)
        while args.serve and not stop.is_set() and not terminal.leaving_for_update():
            terminal.serve_once(200)
        if args.drain_timeout_s > 0 and not terminal.restart_wanted.is_set():
            terminal.drain(args.drain_timeout_s)       # (leaving for an update: the new version uploads)
        if voice is not None:
            voice.wait_idle(10)
    finally:
        terminal.close()
        screens.close()
        reader.close()
        if beeper is not None:
            beeper.close()
    return 0


def run_dispenser(args):
    import contextlib
    import signal
    import threading

    from firmware.apps.dispenser_terminal import DispenserTerminal, VirtualRawClock, load_provisioning
    from reader_drivers.base import open_reader

    provisioning, refused = _provisioning(args.provision, load_provisioning)
    refused = refused or _data_dir_problem(args.data_dir)
    if refused:
        return refused
    if not 0 <= args.flow_ml_per_s <= 1000:
        print("--flow-ml-per-s 须在 0 到 1000 之间 / must be 0 to 1000", file=sys.stderr)
        return _EXIT_REFUSED
    hardware = _dispenser_pins(args)
    if hardware is None:
        return _EXIT_DEVICE
    valve, meter, sim_meter = hardware
    beeper, refused = _open_beeper(args)
    if refused:
        valve.shut()
        meter.close()
        return refused
    reader = open_reader(args.reader)
    screens = contextlib.ExitStack()
    face, refused = _open_face(args, "dispenser", provisioning, screens)
    if refused:
        valve.shut()
        _release(reader, meter, beeper)
        return refused
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        terminal = DispenserTerminal(provisioning, args.data_dir, reader, valve, meter, lang=args.lang,
                                     sync=not args.no_sync, server_url=args.server_url,
                                     sync_interval_ms=args.sync_interval_ms,
                                     raw_ms=VirtualRawClock() if args.virtual_clock else None, sim_meter=sim_meter,
                                     beeper=beeper, face=face)
    except ValueError as error:
        print("开水机无法启动 / the dispenser cannot start: %s" % error, file=sys.stderr)
        valve.shut()
        _release(screens, reader, meter, beeper)
        return _EXIT_REFUSED
    terminal.flow_ml_per_s = args.flow_ml_per_s if sim_meter is not None else 0
    try:
        if args.ble != "none":
            try:
                terminal.attach_radio(args.ble)
            except RuntimeError as error:
                print(str(error), file=sys.stderr)
                return _EXIT_DEVICE
        terminal.start_sync()
        if not args.virtual_clock:
            terminal.start_ticking()
        if args.script:
            _run_script(terminal, args.script)
        while args.serve and not stop.is_set() and not terminal.leaving_for_update():
            terminal.poll_card()
            stop.wait(0.05)
        if args.drain_timeout_s > 0 and not terminal.restart_wanted.is_set():
            terminal.drain(args.drain_timeout_s)       # (leaving for an update: the new version uploads)
    finally:
        terminal.close()
        screens.close()
        reader.close()
        valve.shut()
        meter.close()
        if beeper is not None:
            beeper.close()
    return 0


def _dispenser_pins(args):
    """(valve, meter, simulated meter or None) on the chosen pins; None after a clear error."""
    from firmware.apps import dispenser_hw
    try:
        if args.pins == "mock":
            from gpiozero import Device
            from gpiozero.pins.mock import MockFactory
            Device.pin_factory = MockFactory()
            valve = dispenser_hw.Valve(args.valve_pin)
            meter = dispenser_hw.FlowMeter(args.meter_pin)
            sim = dispenser_hw.SimFlowMeter(Device.pin_factory.pin(args.meter_pin), 450, lambda: valve.is_open)
            return valve, meter, sim
        return dispenser_hw.Valve(args.valve_pin), dispenser_hw.FlowMeter(args.meter_pin), None
    except Exception as error:       # gpiozero says BadPinFactory / PinInvalidPin etc. off a Pi
        print("无法打开阀门或水表引脚 / cannot open the valve or meter pins (%s): %s; off a Raspberry Pi use "
              "--pins mock" % (type(error).__name__, error), file=sys.stderr)
        return None


def run_terminal(args):
    import contextlib
    import queue
    import signal
    import threading

    from firmware.apps.pos_terminal import PosTerminal, load_provisioning
    from firmware.apps.terminal_shell import pump
    from reader_drivers.base import open_reader

    provisioning, refused = _provisioning(args.provision, load_provisioning)
    refused = refused or _data_dir_problem(args.data_dir)
    if refused:
        return refused
    stop = threading.Event()
    with contextlib.ExitStack() as devices:
        scanner = None
        if args.scanner:
            from firmware.apps.code_scanner import ScannerError, open_scanner
            try:
                scanner = devices.enter_context(open_scanner(args.scanner))
            except ScannerError as error:
                print("无法打开扫码枪 / cannot open the scanner: %s" % error, file=sys.stderr)
                return _EXIT_DEVICE
        keypad = None
        if args.keypad:
            from firmware.apps.keypad import KeypadError, open_keypad
            try:
                keypad = devices.enter_context(open_keypad(args.keypad))
            except KeypadError as error:
                print(str(error), file=sys.stderr)
                return _EXIT_DEVICE
        voice, refused = _open_voice(args)
        if refused:
            return refused
        beeper, refused = _open_beeper(args)
        if refused:
            return refused
        if beeper is not None:
            devices.callback(beeper.close)
        face, refused = _open_face(args, "pos", provisioning, devices)
        if refused:
            return refused
        reader = open_reader(args.reader)
        devices.callback(reader.close)
        try:
            terminal = PosTerminal(provisioning, args.data_dir, reader, lang=args.lang,
                                   display=not args.decisions_only, sync=not args.no_sync,
                                   server_url=args.server_url, cards_dir=args.cards_dir,
                                   sync_interval_ms=args.sync_interval_ms, scanner=scanner, beeper=beeper,
                                   voice=voice, face=face)
        except ValueError as error:
            print("消费机无法启动 / the terminal cannot start: %s" % error, file=sys.stderr)
            return _EXIT_REFUSED
        devices.callback(terminal.close)
        devices.callback(stop.set)         # first of all at the end: the input threads stop reading
        terminal.start_sync()
        if args.script and args.script != "-":
            with open(args.script, encoding="utf-8") as stream:
                terminal.run_script(stream)
        elif not args.serve or args.script == "-":
            terminal.run_script(_stdin_lines(terminal.leaving_for_update))
        if args.serve:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            inputs = face.keys if face is not None else queue.Queue(64)
            threads = [pump(lambda: keypad.read_key(200), inputs, stop, "keypad")] if keypad else []
            if scanner is not None:
                threads.append(pump(lambda: _scanned(scanner), inputs, stop, "scanner"))
            try:
                terminal.serve(inputs, stop)
            except KeyboardInterrupt:
                pass
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
        if args.drain_timeout_s > 0 and not terminal.restart_wanted.is_set():
            terminal.drain(args.drain_timeout_s)       # (leaving for an update: the new version uploads)
        if voice is not None:
            voice.wait_idle(10)
    return 0


def _release(*devices):
    """Close what was opened before a refusal (None: never opened)."""
    for device in devices:
        if device is not None:
            device.close()


def _scanned(scanner):
    """The scanner's next code as a ("code", text) input, a garbled one as an empty code (which the
    POS refuses as unreadable), or None when nothing came."""
    from firmware.apps.code_scanner import ScanError
    try:
        text = scanner.read_code(200)
    except ScanError:
        return ("code", "")
    return ("code", text) if text is not None else None


def _add_face_option(parser):
    parser.add_argument("--face", metavar="[HOST:]PORT",
                        help="serve the terminal's screens on this port for Chromium's kiosk mode: /cashier (POS) "
                             "and /holder (the cardholder's side), e.g. --face 8800 and then "
                             "`chromium --kiosk http://127.0.0.1:8800/`; loopback unless a host is given")


def _open_face(args, kind, provisioning, devices):
    """(firmware.apps.face.Face or None, None), or (None, exit code) after a clear error; its server
    runs until `devices` closes."""
    if not args.face:
        return None, None
    from firmware.apps.face import Face, FaceServer
    from firmware.core import keypad
    host, _, port = args.face.rpartition(":")
    try:
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError(port)
    except ValueError:
        print("--face 须为端口或 主机:端口 / --face takes a port or host:port, not %r" % args.face, file=sys.stderr)
        return None, _EXIT_REFUSED
    dishes = provisioning.get("dishes") or {}
    face = Face(kind, args.lang, provisioning["terminal_id"], dishes=dishes,
                dish_keys=keypad.dish_shortcuts(dishes))
    try:
        server = FaceServer(face, host or "127.0.0.1", port).start()
    except OSError as error:
        print("无法提供终端屏幕 / cannot serve the screens on %s: %s" % (args.face, error.strerror or error),
              file=sys.stderr)
        return None, _EXIT_DEVICE
    devices.callback(server.close)
    print("终端屏幕 / screens: %s/" % server.url, file=sys.stderr, flush=True)
    return face, None
