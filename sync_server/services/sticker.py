"""The QR sticker on a water dispenser (扫码用水 → 扫码连接): what the phone scans to find the machine.

The code holds `water_grants.sticker_text(id, static_address(id))` - the dispenser's id and its
Bluetooth address, which the dispenser derives from its id - so a sticker printed from the id alone
leads the phone straight to the machine, with no scan for nearby devices. Error correction level H
(30 % of the modules may be lost): a sticker by a hot-water tap gets wet, scratched and scaled.
SVG carries the caption as text; PNG draws it with Pillow when a CJK font is installed (Debian's
fonts-wqy-microhei), else it is the code alone, still scannable.
"""
import io
import os

import segno

from firmware.core import wallets, water_grants
from sync_server import registry

SCALE = 12               # pixels per module: about 4 cm across at 300 dpi for a version 4 code
BORDER_MODULES = 4       # the quiet zone the QR standard asks for
FORMATS = (".png", ".svg")
_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")


def caption(dispenser_id):
    return ("扫码用水 · 开水机 %d" % dispenser_id, "Scan to draw water · dispenser %d" % dispenser_id)


def check_dispenser(conn, dispenser_id):
    """HallError unless `dispenser_id` is an active water terminal."""
    row = conn.execute("SELECT t.status, m.category FROM terminals t JOIN merchants m ON m.id = t.merchant_id "
                       "WHERE t.id = ?", (dispenser_id,)).fetchone()
    if row is None:
        raise registry.HallError("终端 %d 不存在" % dispenser_id, "terminal %d does not exist" % dispenser_id)
    if row[1] != wallets.CATEGORY_WATER:
        raise registry.HallError("终端 %d 不是开水机" % dispenser_id, "terminal %d is not a water dispenser" % dispenser_id)
    if row[0] != "active":
        raise registry.HallError("开水机 %d 已停用" % dispenser_id, "dispenser %d is revoked" % dispenser_id)


def code(dispenser_id):
    return segno.make_qr(water_grants.sticker_text(dispenser_id, water_grants.static_address(dispenser_id)),
                         error="h")


def render(dispenser_id, path):
    """Write the sticker to `path` (.png or .svg); HallError for another suffix or a missing folder."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise registry.HallError("贴纸文件须以 .png 或 .svg 结尾", "the sticker file must end in .png or .svg")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise registry.HallError("目录不存在：%s" % folder, "no such folder: %s" % folder)
    qr = code(dispenser_id)
    zh, en = caption(dispenser_id)
    if suffix == ".svg":
        _svg(qr, path, zh, en)
    else:
        _png(qr, path, zh, en)
    return path


def _svg(qr, path, zh, en):
    buffer = io.BytesIO()
    qr.save(buffer, kind="svg", scale=SCALE, border=BORDER_MODULES, title="%s / %s" % (zh, en), xmldecl=False,
            svgns=True, nl=False)
    svg = buffer.getvalue().decode("utf-8")
    width, height = qr.symbol_size(scale=SCALE, border=BORDER_MODULES)
    text_height = 3 * SCALE * 3
    # grow the canvas and put the caption under the code
    svg = svg.replace('height="%d"' % height, 'height="%d"' % (height + text_height), 1)
    texts = ('<text x="%d" y="%d" font-size="%d" text-anchor="middle" font-family="sans-serif">%s</text>'
             % (width // 2, height + SCALE * 3, SCALE * 2, _escape(zh)) +
             '<text x="%d" y="%d" font-size="%d" text-anchor="middle" font-family="sans-serif">%s</text>'
             % (width // 2, height + SCALE * 6, int(SCALE * 1.4), _escape(en)))
    svg = svg.replace("</svg>", texts + "</svg>")
    # opaque, so that the code still scans shown on a dark screen or printed on coloured stock
    svg = svg.replace("</title>", '</title><rect width="100%" height="100%" fill="#fff"/>', 1)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('<?xml version="1.0" encoding="utf-8"?>\n' + svg)


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _png(qr, path, zh, en):
    font_path = next((f for f in _FONTS if os.path.exists(f)), None)
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        Image = None
    if Image is None or font_path is None:
        qr.save(path, kind="png", scale=SCALE, border=BORDER_MODULES)
        return
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=SCALE, border=BORDER_MODULES)
    buffer.seek(0)
    symbol = Image.open(buffer).convert("L")
    width, height = symbol.size
    sticker = Image.new("L", (width, height + SCALE * 8), 255)
    sticker.paste(symbol, (0, 0))
    draw = ImageDraw.Draw(sticker)
    for text, size, top in ((zh, SCALE * 2, height), (en, int(SCALE * 1.4), height + SCALE * 3 + SCALE // 2)):
        font = ImageFont.truetype(font_path, size)
        left = max(0, (width - draw.textlength(text, font=font)) // 2)
        draw.text((left, top), text, fill=0, font=font)
    sticker.save(path, format="PNG")
