#!/usr/bin/env python3
"""Flash an ESP32-class water dispenser (firmware/esp32/dispenser_main.py) over its USB serial line.

    python tools/flash_board.py --port /dev/ttyUSB0 --provision water-7.json [--config board.json]
                                [--set price_fen_per_litre=30 ...] [--no-mip] [--no-reset]

    flash_board(port, provisioning, config, progress=print) -> [(path on the board, sha256 hex), ...]

What goes on the board: firmware/__init__.py, the firmware/core modules dispenser_main.py imports
(read from its imports and theirs, so a module it comes to need comes along), dispenser_main.py as
main.py, and CONFIG_FILE (dispenser.json: the dispenser's id, merchant and water key from the
provisioning file `ykt hall terminal-register --out` wrote, and the board settings). That file holds
a key: it is written and hashed, never printed. aioble must be importable on the board: where it is
not, `mpremote mip install aioble` is run for it (it needs the internet; --no-mip refuses instead),
and where it is (installed before, or frozen, as on the virtual board) it is left alone.

How, and why in this order:
1. Connect, interrupt the running program, soft-reset into the raw REPL (mpremote's own steps).
2. A main.py already there is renamed to STAGED_MAIN and the board is reset: the dispenser's
   watchdog keeps running through a soft reset (it resets the board ten seconds after its program was
   interrupted, on the ESP32 as on the virtual board), and only a reset stops it. Without main.py the
   board comes up in its REPL with the valve's pin undriven (closed by its pull-down).
3. Each file: its sha256 read on the board (hashlib there); equal -> skipped ("up to date"), else
   written and its hash read back. So a second run finishes a board a first run left half-flashed.
4. The new main.py is written as STAGED_MAIN and renamed to main.py last: a board that loses power
   or its cable while being flashed never boots half a new firmware.
5. All hashes read back once more; then a reset starts the dispenser (unless --no-reset).

mpremote is used as a library (its SerialTransport), not as a subprocess: one serial connection for
the whole job (each mpremote process would interrupt and soft-reset the board again), and its
failures arrive as exceptions, which become one FlashError in Chinese and English; the bytes on the
line are those `mpremote fs cp` sends.
"""
import argparse
import ast
import hashlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from firmware.core import wallets  # noqa: E402
from sync_server.messages import BilingualError  # noqa: E402

BOARD_MAIN = os.path.join(ROOT, "firmware", "esp32", "dispenser_main.py")
STAGED_MAIN = "main.py.new"
BAUD_RATE = 115200
READ_TIMEOUT_S = 10             # a board that says nothing this long is gone (not a performance bound)
RECONNECT_WAIT_S = 10           # a board with native USB comes back as a new device after its reset
RAW_REPL_TRIES = 5
WRITE_CHUNK_BYTES = 1024        # per exec: fewer round trips than mpremote's 256, small for the board
HASH_CHUNK_BYTES = 512
MAX_CORE_MODULES = 64           # the import walk's bound; far above what the dispenser needs

# the on-board hash: hashlib and binascii are in every MicroPython port's default build
_HASH_CODE = """import hashlib, binascii
try:
 f = open(%r, 'rb')
except OSError:
 print('-')
else:
 h = hashlib.sha256()
 b = bytearray(%d)
 while True:
  n = f.readinto(b)
  if not n:
   break
  h.update(memoryview(b)[:n])
 f.close()
 print(binascii.hexlify(h.digest()).decode())
"""


class FlashError(BilingualError):
    """The board could not be flashed; `zh` and `en` say why and what to do."""


# --- what goes on the board --------------------------------------------------------------------------

def _board_main_source():
    with open(BOARD_MAIN, "rb") as handle:
        return handle.read()


def _assignments(source):
    """Top-level NAME = literal assignments of a module (its constants), read without importing it:
    dispenser_main imports machine and aioble, which CPython has not."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return found


_CONSTANTS = _assignments(_board_main_source())
CONFIG_FILE = _CONSTANTS["CONFIG_FILE"]
BOARD_SETTINGS = _CONSTANTS["DEFAULTS"]     # what the board reads from CONFIG_FILE, with its defaults


def _core_imports(source):
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "firmware.core":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("firmware.core."):
            names.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[2] for alias in node.names
                         if alias.name.startswith("firmware.core."))
    return names


def board_files():
    """[(path on the board, local path)] of the firmware: packages first, main.py last."""
    needed, queue = set(), sorted(_core_imports(_board_main_source()))
    while queue:
        name = queue.pop()
        if name in needed:
            continue
        needed.add(name)
        assert len(needed) <= MAX_CORE_MODULES, "the dispenser's imports do not end"
        with open(os.path.join(ROOT, "firmware", "core", name + ".py"), "rb") as handle:
            queue.extend(sorted(_core_imports(handle.read()) - needed))
    files = [("firmware/__init__.py", os.path.join(ROOT, "firmware", "__init__.py")),
             ("firmware/core/__init__.py", os.path.join(ROOT, "firmware", "core", "__init__.py"))]
    files += [("firmware/core/%s.py" % name, os.path.join(ROOT, "firmware", "core", name + ".py"))
              for name in sorted(needed)]
    files.append(("main.py", BOARD_MAIN))
    return files


def board_config(provisioning, config):
    """The JSON CONFIG_FILE holds (bytes), from a water dispenser's provisioning document and the
    board settings; FlashError for anything the board would refuse or misread."""
    if not isinstance(provisioning, dict):
        raise FlashError("配置文件不是终端登记生成的 JSON", "the provisioning file is not the JSON terminal-register writes")
    category = provisioning.get("category")
    if category != wallets.CATEGORY_WATER:
        kind = wallets.CATEGORY_NAMES.get(category, str(category))
        raise FlashError("这不是开水机的配置文件（商户类别为 %s）：ESP32 开水机板只能用开水机商户登记的终端" % kind,
                         "this provisioning file is not a water dispenser's (merchant category %s): an ESP32 "
                         "dispenser board takes a terminal registered to a water merchant" % kind)
    try:
        dispenser_id = int(provisioning["terminal_id"])
        merchant_id = int(provisioning["merchant_id"])
        water_key = provisioning["sam_keys"]["water"]
        if len(bytes.fromhex(water_key)) != 32:
            raise ValueError("water key length")
    except (KeyError, TypeError, ValueError):
        raise FlashError("配置文件缺少开水机的编号、商户或用水密钥：请重新登记该终端",
                         "the provisioning file lacks the dispenser's id, merchant or water key: register the "
                         "terminal again")
    settings = {}
    for name, value in (config or {}).items():
        if name not in BOARD_SETTINGS:
            raise FlashError("未知的开水机设置 %s（可用：%s）" % (name, "、".join(sorted(BOARD_SETTINGS))),
                             "unknown dispenser setting %s (known: %s)" % (name, ", ".join(sorted(BOARD_SETTINGS))))
        default = BOARD_SETTINGS[name]
        wanted = bool if isinstance(default, bool) else int
        if type(value) is not wanted or (wanted is int and (value < 0 or (value == 0 and name == "pulses_per_litre"))):
            raise FlashError("开水机设置 %s 的值 %r 无效（应为%s）" % (name, value, "true/false" if wanted is bool else "正整数"),
                             "dispenser setting %s: %r is not valid (%s expected)"
                             % (name, value, "true/false" if wanted is bool else "a positive whole number"))
        settings[name] = value
    document = dict(settings, dispenser_id=dispenser_id, merchant_id=merchant_id, water_key=water_key.lower(),
                    key_version=int(provisioning.get("key_version", 1)))
    return json.dumps(document, sort_keys=True).encode()


# --- the serial line -------------------------------------------------------------------------------------

def _lost(error):
    return FlashError("与开发板的连接中断（%s）：请检查数据线和电源后重新运行，已写入并校验的文件会跳过" % _reason(error),
                      "the connection to the board was lost (%s): check the cable and the power, then run again - "
                      "files already written and verified are skipped" % _reason(error))


def _reason(error):
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:120]


def _open(port, wait_s=0):
    from mpremote.transport_serial import SerialTransport
    from mpremote.transport import TransportError
    try:
        return SerialTransport(port, baudrate=BAUD_RATE, wait=wait_s, timeout=READ_TIMEOUT_S)
    except (TransportError, OSError) as error:
        raise FlashError("打不开串口 %s（%s）：开发板是否已连接？是否有别的程序（mpremote、串口终端）占用？"
                         % (port, _reason(error)),
                         "cannot open the serial port %s (%s): is the board connected, and is no other program "
                         "(mpremote, a serial terminal) using it?" % (port, _reason(error)))


def _raw_repl(transport, soft_reset):
    """Into the raw REPL; a board still booting may miss the first Ctrl-C, so it is asked again."""
    from mpremote.transport import TransportError
    for attempt in range(RAW_REPL_TRIES):
        try:
            transport.enter_raw_repl(soft_reset=soft_reset, timeout_overall=READ_TIMEOUT_S)
            return
        except TransportError:
            if attempt == RAW_REPL_TRIES - 1:
                raise
            time.sleep(0.2)


def _exec(transport, code):
    return transport.exec(code).decode("utf-8", "replace").strip()


def _exists(transport, path):
    return _exec(transport, "import os\ntry:\n os.stat(%r)\n print(1)\nexcept OSError:\n print(0)" % path) == "1"


def remote_sha256(transport, path):
    """The sha256 (hex) of a file as the board reads it, or None when it has no such file."""
    digest = _exec(transport, _HASH_CODE % (path, HASH_CHUNK_BYTES))
    return None if digest == "-" else digest


def _make_parents(transport, path):
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        _exec(transport, "import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass" % "/".join(parts[:depth]))


def _put(transport, path, data, progress, label=None):
    """Write `data` to `path` unless the board has it already; verify the hash either way. `label`:
    how the progress lines name the file, (Chinese, English)."""
    zh, en = label or (path, path)
    digest = hashlib.sha256(data).hexdigest()
    if remote_sha256(transport, path) == digest:
        progress("已是最新：%s / up to date: %s" % (zh, en))
        return digest
    _make_parents(transport, path)
    progress("写入 %s（%d 字节）/ writing %s (%d bytes)" % (zh, len(data), en, len(data)))
    transport.fs_writefile(path, data, chunk_size=WRITE_CHUNK_BYTES)
    if remote_sha256(transport, path) != digest:
        raise FlashError("%s 写入后校验不符：请重新运行；仍不符则开发板的闪存可能已损坏" % zh,
                         "%s does not verify after writing: run again; if it still fails, the board's flash may "
                         "be worn out" % en)
    return digest


def _stop_program(transport, port, progress):
    """Step 2: no main.py, no watchdog. Returns the transport to go on with (a new one after a reset)."""
    had_main = _exists(transport, "main.py")
    if not had_main and not _exists(transport, STAGED_MAIN):
        return transport
    if had_main:
        _exec(transport, "import os\nos.rename('main.py', %r)" % STAGED_MAIN)
    progress("停用开发板上的程序并重启（其看门狗随之停止）/ disabling the board's program and resetting it "
             "(which stops its watchdog)")
    _reset(transport)
    transport.close()
    transport = _open(port, RECONNECT_WAIT_S)
    _raw_repl(transport, soft_reset=False)
    return transport


def _reset(transport):
    transport.exec_raw_no_follow("import machine\nmachine.reset()")


def _ensure_aioble(transport, mip, progress):
    from mpremote.transport import TransportExecError
    check = "try:\n import aioble\n print(1)\nexcept ImportError:\n print(0)"
    if _exec(transport, check) == "1":
        progress("aioble 已在开发板上 / aioble is on the board already")
        return
    if not mip:
        raise FlashError("开发板上没有 aioble：请联网后去掉 --no-mip 重新运行，或先运行 mpremote mip install aioble",
                         "aioble is not on the board: run again without --no-mip while online, or run "
                         "mpremote mip install aioble first")
    progress("安装 aioble（mpremote mip，需要联网）/ installing aioble (mpremote mip, needs the internet)")
    from mpremote import mip as mpremote_mip
    from mpremote.commands import CommandError
    try:
        mpremote_mip._install_package(transport, "aioble", mpremote_mip._PACKAGE_INDEX, "/lib", None, True)
    except (OSError, TransportExecError, CommandError) as error:
        raise FlashError("aioble 安装失败（%s）：请检查网络，或先运行 mpremote mip install aioble" % _reason(error),
                         "installing aioble failed (%s): check the internet connection, or run mpremote mip "
                         "install aioble first" % _reason(error))
    if _exec(transport, check) != "1":
        raise FlashError("aioble 安装后仍无法导入", "aioble cannot be imported even after installing it")


def flash_board(port, provisioning, config, progress=print, *, mip=True, reset=True):
    """Flash the dispenser onto the board at `port`; -> [(path on the board, sha256 hex)], verified."""
    from mpremote.transport import TransportError, TransportExecError
    import serial
    config_bytes = board_config(provisioning, config)
    files = [(path, open_bytes(local)) for path, local in board_files()]
    main_bytes = files.pop()[1]
    progress("连接开发板 %s / connecting to the board at %s" % (port, port))
    transport = _open(port)
    try:
        try:
            _raw_repl(transport, soft_reset=True)
        except TransportError as error:
            raise FlashError("%s 上的设备不应答 MicroPython 的 REPL（%s）：是刷好 MicroPython 的 ESP32 吗？"
                             "按一下开发板的 EN（复位）键后重试" % (port, _reason(error)),
                             "the device at %s does not answer as MicroPython's REPL (%s): is it an ESP32 with "
                             "MicroPython on it? Press the board's EN (reset) button and try again"
                             % (port, _reason(error)))
        transport = _stop_program(transport, port, progress)
        hashes = []
        for path, data in files:
            hashes.append((path, _put(transport, path, data, progress)))
        hashes.append((CONFIG_FILE, _put(transport, CONFIG_FILE, config_bytes, progress,
                                         label=("%s（含密钥）" % CONFIG_FILE, "%s (holds the key)" % CONFIG_FILE))))
        _ensure_aioble(transport, mip, progress)
        main_digest = _put(transport, STAGED_MAIN, main_bytes, progress, label=("main.py", "main.py"))
        _exec(transport, "import os\nos.rename(%r, 'main.py')" % STAGED_MAIN)
        hashes.append(("main.py", main_digest))
        progress("校验开发板上的 %d 个文件 / verifying the %d files on the board" % (len(hashes), len(hashes)))
        for path, digest in hashes:
            if remote_sha256(transport, path) != digest:
                raise FlashError("%s 校验不符：请重新运行" % path, "%s does not verify: run again" % path)
        if reset:
            progress("重启开发板，开水机程序启动 / resetting the board: the dispenser starts")
            _reset(transport)
        return hashes
    except TransportExecError as error:
        raise FlashError("开发板执行命令出错（%s）：请重新运行" % _reason(error.error_output),
                         "the board failed a command (%s): run again" % _reason(error.error_output))
    except (TransportError, serial.SerialException, OSError) as error:
        raise _lost(error)
    finally:
        try:
            transport.close()
        except (OSError, serial.SerialException):
            pass        # the line is gone already


def open_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


# --- the command line ------------------------------------------------------------------------------------

def parse_setting(text):
    """One board setting, KEY=VALUE -> (key, value): a whole number or true/false (what
    BOARD_SETTINGS holds); ValueError saying what is wrong otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError("KEY=VALUE expected")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return name.strip(), lowered == "true"
    try:
        return name.strip(), int(value)
    except ValueError:
        raise ValueError("%s: a whole number or true/false expected" % text)


def _setting(text):
    try:
        return parse_setting(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise FlashError("读不了%s %s（%s）" % (what[0], path, _reason(error)),
                         "cannot read the %s %s (%s)" % (what[1], path, _reason(error)))


def main(argv=None):
    parser = argparse.ArgumentParser(description="烧写 ESP32 开水机（mpremote）/ flash an ESP32 water dispenser "
                                     "over its serial line (mpremote)")
    parser.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    parser.add_argument("--provision", required=True,
                        help="the dispenser's provisioning file (ykt hall terminal-register --out)")
    parser.add_argument("--config", help="JSON file of board settings, e.g. {\"price_fen_per_litre\": 30}")
    parser.add_argument("--set", action="append", type=_setting, default=[], metavar="KEY=VALUE",
                        help="one board setting (known: %s); after --config" % ", ".join(sorted(BOARD_SETTINGS)))
    parser.add_argument("--no-mip", action="store_true",
                        help="do not install aioble from the internet when the board lacks it (stop instead)")
    parser.add_argument("--no-reset", action="store_true", help="leave the board in its REPL afterwards")
    args = parser.parse_args(argv)
    try:
        provisioning = _read_json(args.provision, ("配置文件", "provisioning file"))
        config = _read_json(args.config, ("设置文件", "settings file")) if args.config else {}
        if not isinstance(config, dict):
            raise FlashError("设置文件应为 JSON 对象", "the settings file must hold a JSON object")
        config.update(dict(args.set))
        hashes = flash_board(args.port, provisioning, config, progress=lambda line: print(line, flush=True),
                             mip=not args.no_mip, reset=not args.no_reset)
    except FlashError as error:
        print("错误：%s / error: %s" % (error.zh, error.en), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("已中断：重新运行即可继续 / interrupted: run again to finish", file=sys.stderr)
        return 130
    print("完成：%d 个文件已写入并校验 / done: %d files written and verified" % (len(hashes), len(hashes)))
    for path, digest in hashes:
        print("%s  %s" % (digest, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
