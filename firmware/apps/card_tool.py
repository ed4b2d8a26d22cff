"""`ykt card`: a technician's look at readers and cards, on any driver.

    ykt card readers                         PC/SC readers (pcscd), serial ports (pyserial), nfcpy USB
    ykt card uid   [--reader URL]            wait for a card: UID, ATQA, SAK
    ykt card info  [--reader URL] --provision F    UID, identity, masked name, tap counter
    ykt card dump  [--reader URL] [--provision F]  every sector a known key opens, as hex
    common: [--card-file IMAGE (sim: only)] [--timeout-ms N] [--json] [--lang en]

Keys come from the terminal's provisioning file (`ykt hall terminal-register --out F`): the per-card
keys are diversified from its purpose keys through the key holder (firmware.core.sam), and `dump`
also tries the factory transport key. No key is ever printed: not the provisioning keys, not the
sector keys, and not the key A / key B bytes of a sector trailer (key A always reads as zeros, key B
may be readable under some access conditions; both are masked). Names are shown masked (张*明).

The tool only reads. A failed authentication halts a MIFARE Classic card, so after one the card is
selected again (poll) before the next key is tried; a card that leaves meanwhile ends the command.

While it waits for a card it says so on stderr (请刷卡 / tap a card), so stdout stays the result.

Exit codes (the table of sync_server/mistakes.py, repeated here because the terminal side does not
import the server; tests/test_mistakes.py checks they agree): 0 done; 1 no card, or the card left;
2 a usage the tool refuses (--card-file off the sim: reader); 4 the provisioning file or card image
cannot be read; 5 the reader cannot be opened or fails; 6 the card is not one this site's keys read
(blank, foreign, corrupted); 7 the provisioning file or card image is malformed.
"""
import json
import os
import sys

from firmware.apps import card_io, provisioning
from firmware.core import card_layout, mifare, sam as sam_module
from reader_drivers.base import AuthenticationError, CardGone, CardNak, ReaderError, open_reader

DEFAULT_TIMEOUT_MS = 10000
REPOLL_TIMEOUT_MS = 500          # the card was just there: re-selecting it is quick or it left
EXIT_OK = 0
EXIT_NO_CARD = 1
EXIT_REFUSED = 2
EXIT_FILE = 4
EXIT_READER = 5
EXIT_NOT_OUR_CARD = 6
EXIT_MALFORMED = 7
MASKED_KEY = "-" * (2 * mifare.KEY_SIZE)

KEY_DIVERSIFIED_A = "diversified_a"
KEY_DIVERSIFIED_B = "diversified_b"
KEY_TRANSPORT_A = "transport_a"
KEY_TRANSPORT_B = "transport_b"
KEY_LABELS = {KEY_DIVERSIFIED_A: ("本系统密钥A", "site key A"), KEY_DIVERSIFIED_B: ("本系统密钥B", "site key B"),
              KEY_TRANSPORT_A: ("出厂密钥A", "transport key A"), KEY_TRANSPORT_B: ("出厂密钥B", "transport key B")}
HOLDER_LABELS = {card_layout.HOLDER_STAFF: ("教职工", "staff"), card_layout.HOLDER_STUDENT: ("学生", "student"),
                 card_layout.HOLDER_SELF_EMPLOYED: ("自聘人员", "self-employed staff"),
                 card_layout.HOLDER_TEMPORARY: ("临时卡", "temporary"),
                 card_layout.HOLDER_IDENTITY_ONLY: ("身份卡", "identity only")}


class ToolError(Exception):
    """A refusal with a bilingual message and the exit code that goes with it."""

    def __init__(self, exit_code, zh, en):
        super().__init__(en)
        self.exit_code = exit_code
        self.zh = zh
        self.en = en

    def text(self, lang):
        return self.en if lang == "en" else self.zh


# --- keys -------------------------------------------------------------------------------------------

def card_keys_from_provisioning(document):
    """A key holder with the card purpose keys the provisioning file carries (never the terminal key:
    reading cards does not need it)."""
    try:
        return sam_module.SoftwareSAM(provisioning.purpose_keys(
            document, (sam_module.CARD_KEY_A, sam_module.CARD_KEY_B, sam_module.CARD_MAC)))
    except ValueError:
        raise ToolError(EXIT_MALFORMED, "终端配置文件中的密钥格式错误", "the provisioning file's keys are not hex")


def load_card_keys(path):
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise ToolError(EXIT_FILE, "无法读取终端配置文件：%s" % error, "cannot read the provisioning file: %s" % error)
    except ValueError as error:
        # The error text names the JSON position, never the file's content.
        raise ToolError(EXIT_MALFORMED, "无法读取终端配置文件（格式错误）：%s" % error,
                        "cannot read the provisioning file (malformed): %s" % error)
    if not isinstance(document, dict):
        raise ToolError(EXIT_MALFORMED, "终端配置文件格式错误", "the provisioning file is not a JSON object")
    return card_keys_from_provisioning(document)


def sector_key_candidates(key_holder, uid, sector):
    """(label, key type, key) to try on one sector, the site's own keys first."""
    candidates = []
    if key_holder is not None:
        for label, purpose, key_type in ((KEY_DIVERSIFIED_A, sam_module.CARD_KEY_A, mifare.A),
                                         (KEY_DIVERSIFIED_B, sam_module.CARD_KEY_B, mifare.B)):
            if key_holder.has(purpose):
                candidates.append((label, key_type, key_holder.card_sector_key(uid, sector, key_type)))
    candidates.append((KEY_TRANSPORT_A, mifare.A, mifare.TRANSPORT_KEY))
    candidates.append((KEY_TRANSPORT_B, mifare.B, mifare.TRANSPORT_KEY))
    return candidates


# --- the card operations ------------------------------------------------------------------------

def wait_for_card(reader, timeout_ms, lang="zh"):
    """The card in the field; while waiting, 请刷卡 on stderr (stdout is the result, for scripts)."""
    print(_pick(lang, "请刷卡（%d 秒内）…", "tap a card (within %d s)...") % max(1, round(timeout_ms / 1000)),
          file=sys.stderr, flush=True)
    target = reader.poll(timeout_ms)
    if target is None:
        raise ToolError(EXIT_NO_CARD, "%d 毫秒内未检测到卡片" % timeout_ms, "no card within %d ms" % timeout_ms)
    return target


def card_type(target):
    if target.is_mifare_classic_1k:
        return "MIFARE Classic 1K"
    return "SAK %02x" % target.sak


def describe_target(target):
    return {"uid": target.uid.hex(), "atqa": "%04x" % target.atqa, "sak": "%02x" % target.sak,
            "type": card_type(target)}


def card_info(reader, key_holder, target):
    """UID and what the card says about its holder (MAC checked), name masked."""
    for purpose in (sam_module.CARD_KEY_A, sam_module.CARD_MAC):
        if not key_holder.has(purpose):
            raise ToolError(EXIT_MALFORMED, "终端配置文件缺少密钥 %s" % purpose,
                            "the provisioning file lacks the %s key" % purpose)
    try:
        view = card_io.read_card(reader, key_holder, target)
    except card_layout.CardFormatError as error:
        raise ToolError(EXIT_NOT_OUR_CARD, "不是可读的本系统卡片：%s" % error, "not a readable card of this site: %s" % error)
    except AuthenticationError:
        raise ToolError(EXIT_NOT_OUR_CARD, "密钥不符：不是本系统的卡片", "keys do not match: not a card of this site")
    identity = view.identity
    info = describe_target(target)
    info.update({"card_number": identity.card_number, "account_id": identity.account_id,
                 "generation": identity.generation, "holder_category": identity.holder_category,
                 "expiry_yyyymmdd": identity.expiry_yyyymmdd, "name_masked": card_layout.mask_name(view.name),
                 "tap_counter": view.tap_counter})
    return info


def _select_again(reader, uid):
    """After a refused key or command the card is halted: select it again (the same card)."""
    again = reader.poll(REPOLL_TIMEOUT_MS)
    if again is None or again.uid != uid:
        raise CardGone("卡片已移开 / the card left during the dump")


def mask_trailer(data):
    """A trailer as hex with key A and key B masked: only access bits and the user byte show."""
    assert len(data) == mifare.BLOCK_SIZE
    return MASKED_KEY + bytes(data[6:10]).hex() + MASKED_KEY


def _describe_block(block, data):
    if mifare.is_trailer(block):
        entry = {"block": block, "hex": mask_trailer(data)}
        try:
            entry["access"] = ["%d%d%d" % bits for bits in mifare.decode_access_bits(data[6:9])]
        except mifare.FormatError:
            entry["access"] = None
        return entry
    entry = {"block": block, "hex": bytes(data).hex()}
    if block != 0:
        try:
            entry["value"], entry["value_address"] = mifare.decode_value_block(bytes(data))
        except mifare.FormatError:
            pass
    return entry


def _read_sector(reader, uid, sector, key_type, key):
    """Every block of an authenticated sector; a block the access bits refuse is None."""
    blocks = []
    first = sector * mifare.BLOCKS_PER_SECTOR
    for block in range(first, first + mifare.BLOCKS_PER_SECTOR):
        try:
            blocks.append(_describe_block(block, reader.read_block(block)))
        except CardNak:
            blocks.append({"block": block, "hex": None})
            _select_again(reader, uid)
            reader.authenticate(mifare.trailer_block(sector), key_type, key)
    return blocks


def dump_card(reader, key_holder, target):
    """Every sector some known key opens: [{"sector", "key" (a label, never bytes), "blocks"}]."""
    if not target.is_mifare_classic_1k or len(target.uid) not in (4, 7):
        shown = (target.sak, len(target.uid))
        raise ToolError(EXIT_NOT_OUR_CARD, "不是 MIFARE Classic 1K 卡片（SAK %02x，UID %d 字节），无法导出" % shown,
                        "not a MIFARE Classic 1K card (SAK %02x, %d-byte UID): nothing to dump" % shown)
    uid = target.uid
    sectors = []
    for sector in range(mifare.SECTORS):
        entry = {"sector": sector, "key": None, "blocks": None}
        for label, key_type, key in sector_key_candidates(key_holder, uid, sector):
            try:
                reader.authenticate(mifare.trailer_block(sector), key_type, key)
            except AuthenticationError:
                _select_again(reader, uid)
                continue
            entry["key"] = label
            entry["blocks"] = _read_sector(reader, uid, sector, key_type, key)
            break
        sectors.append(entry)
    return sectors


def list_readers():
    """What a technician can pass to --reader: [{"kind", "url", "name"}], and {kind: why not listed}."""
    found = []
    problems = {}
    try:
        from reader_drivers import pcsc
        for name in pcsc.list_readers():
            found.append({"kind": "pcsc", "url": "pcsc:" + name, "name": name})
    except (ImportError, ReaderError) as error:
        problems["pcsc"] = str(error)
    try:
        from serial.tools import list_ports
        for port in sorted(list_ports.comports(), key=lambda port: port.device):
            found.append({"kind": "serial", "url": "pn532:" + port.device,
                          "name": port.description or port.device})
    except (ImportError, OSError) as error:
        problems["serial"] = str(error)
    try:
        import nfc.clf.device
        import nfc.clf.transport
        for vendor, product, bus, address in nfc.clf.transport.USB.find("usb") or ():
            chip = nfc.clf.device.usb_device_map.get((vendor, product))
            if chip:
                found.append({"kind": "nfcpy", "url": "nfcpy:usb:%03d:%03d" % (bus, address),
                              "name": "%s %04x:%04x" % (chip, vendor, product)})
    except Exception as error:     # no libusb, no permission on /dev/bus/usb: say so, list the rest
        problems["nfcpy"] = "%s: %s" % (type(error).__name__, error)
    return found, problems


# --- command line ---------------------------------------------------------------------------------

def register(subparsers):
    """`ykt card ...`; called from firmware/apps/cli.py."""
    import argparse
    lang_default = "en" if os.environ.get("YKT_LANG", "zh").startswith("en") else "zh"
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="one JSON object on stdout")
    output.add_argument("--lang", choices=("zh", "en"), default=lang_default,
                        help="language of messages (default $YKT_LANG, else zh)")
    reading = argparse.ArgumentParser(add_help=False, parents=[output])
    reading.add_argument("--reader", default="sim:", help="reader URL: sim:, pn532:/dev/ttyS0, pcsc:ACR122, nfcpy:usb")
    reading.add_argument("--card-file", help="sim: only - place this card image in the field")
    reading.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS, help="how long to wait for a card")

    parser = subparsers.add_parser(
        "card", help="读卡工具（技术员）/ card tool for technicians",
        description="列出读卡器、读卡号与身份、按已知密钥导出扇区；不显示任何密钥 / list readers, read a card's UID "
                    "and identity, dump sectors with known keys; never shows a key")
    commands = parser.add_subparsers(dest="card_command", metavar="COMMAND")
    commands.required = True
    readers = commands.add_parser("readers", parents=[output], help="列出读卡器 / list readers")
    readers.set_defaults(handler=run_card, card_action="readers")
    uid = commands.add_parser("uid", parents=[reading], help="读卡号 / UID, ATQA, SAK")
    uid.set_defaults(handler=run_card, card_action="uid")
    info = commands.add_parser("info", parents=[reading], help="读卡片身份 / UID, identity, tap counter")
    info.add_argument("--provision", required=True, help="the terminal's provisioning file (holds keys)")
    info.set_defaults(handler=run_card, card_action="info")
    dump = commands.add_parser("dump", parents=[reading], help="导出扇区 / dump sectors with known keys")
    dump.add_argument("--provision", help="the terminal's provisioning file; without it only transport keys")
    dump.set_defaults(handler=run_card, card_action="dump")


def _open(args):
    try:
        reader = open_reader(args.reader)
    except ReaderError as error:
        raise ToolError(EXIT_READER, "无法打开读卡器：%s" % error, "cannot open the reader: %s" % error)
    if args.card_file:
        field = getattr(reader, "field", None)
        if field is None:
            reader.close()
            raise ToolError(EXIT_REFUSED, "--card-file 只用于模拟读卡器 sim:", "--card-file works with the sim: reader only")
        from reader_drivers.sim.classic_card import ClassicCard
        try:
            field.place(ClassicCard.load(args.card_file))
        except OSError as error:
            reader.close()
            raise ToolError(EXIT_FILE, "无法读取卡片映像：%s" % error, "cannot load the card image: %s" % error)
        except ValueError as error:
            reader.close()
            raise ToolError(EXIT_MALFORMED, "卡片映像格式错误：%s" % error, "the card image is malformed: %s" % error)
    return reader


def run_card(args):
    lang = args.lang
    try:
        if args.card_action == "readers":
            found, problems = list_readers()
            _print(args, {"readers": found, "problems": problems}, _readers_text(found, problems, lang))
            return EXIT_OK
        key_holder = load_card_keys(args.provision) if getattr(args, "provision", None) else None
        reader = _open(args)
        try:
            target = wait_for_card(reader, max(0, args.timeout_ms), lang)
            if args.card_action == "uid":
                result = describe_target(target)
                if getattr(reader, "atr", None):
                    result["atr"] = bytes(reader.atr).hex()
                text = _uid_text(result, lang)
            elif args.card_action == "info":
                result = card_info(reader, key_holder, target)
                text = _info_text(result, lang)
            else:
                result = describe_target(target)
                result["sectors"] = dump_card(reader, key_holder, target)
                text = _dump_text(result, lang)
        finally:
            reader.close()
    except ToolError as error:
        _fail(args, error.exit_code, error.text(lang))
        return error.exit_code
    except CardGone:
        _fail(args, EXIT_NO_CARD, "卡片已移开，请重新放卡" if lang == "zh" else "the card left: place it again")
        return EXIT_NO_CARD
    except ReaderError as error:
        _fail(args, EXIT_READER, ("读卡器错误：%s" if lang == "zh" else "reader error: %s") % error)
        return EXIT_READER
    _print(args, result, text)
    return EXIT_OK


def _print(args, result, text):
    print(json.dumps(result, ensure_ascii=False, sort_keys=True) if args.json else text)


def _fail(args, exit_code, message):
    if args.json:
        print(json.dumps({"error": message, "exit_code": exit_code}, ensure_ascii=False, sort_keys=True))
    print(message, file=sys.stderr)


def _pick(lang, zh, en):
    return en if lang == "en" else zh


def _readers_text(found, problems, lang):
    lines = ["%-7s %-40s %s" % (entry["kind"], entry["url"], entry["name"]) for entry in found]
    if not found:
        lines.append(_pick(lang, "未找到读卡器", "no readers found"))
    for kind in sorted(problems):
        lines.append(_pick(lang, "（%s 不可用：%s）", "(%s unavailable: %s)") % (kind, problems[kind]))
    return "\n".join(lines)


def _uid_text(result, lang):
    text = "UID %s  ATQA %s  SAK %s  %s" % (result["uid"], result["atqa"], result["sak"], result["type"])
    if "atr" in result:
        text += "  ATR %s" % result["atr"]
    return _pick(lang, "卡号 ", "card ") + text


def _info_text(info, lang):
    zh_holder, en_holder = HOLDER_LABELS.get(info["holder_category"], ("?", "?"))
    rows = (("UID", "UID", info["uid"]), ("卡号", "card number", info["card_number"]),
            ("账户", "account", info["account_id"]), ("卡代数", "generation", info["generation"]),
            ("身份", "holder", _pick(lang, zh_holder, en_holder)), ("有效期至", "expires", info["expiry_yyyymmdd"]),
            ("姓名", "name", info["name_masked"]), ("刷卡次数", "tap counter", info["tap_counter"]))
    return "\n".join("%s: %s" % (_pick(lang, zh, en), value) for zh, en, value in rows)


def _dump_text(result, lang):
    lines = [_uid_text(result, lang)]
    for sector in result["sectors"]:
        if sector["key"] is None:
            lines.append(_pick(lang, "扇区 %2d  无法认证（已知密钥均不匹配）", "sector %2d  cannot authenticate with "
                               "any known key") % sector["sector"])
            continue
        zh_key, en_key = KEY_LABELS[sector["key"]]
        lines.append(_pick(lang, "扇区 %2d  密钥：%s", "sector %2d  key: %s") % (sector["sector"], _pick(lang, zh_key, en_key)))
        for block in sector["blocks"]:
            if block["hex"] is None:
                shown = _pick(lang, "（无权读取）", "(not readable with this key)")
            else:
                shown = block["hex"]
                if block.get("access"):
                    shown += _pick(lang, "  控制位 %s", "  access %s") % " ".join(block["access"])
                if "value" in block:
                    shown += _pick(lang, "  数值 %d", "  value %d") % block["value"]
            lines.append("  %s %2d  %s" % (_pick(lang, "块", "block"), block["block"], shown))
    return "\n".join(lines)
