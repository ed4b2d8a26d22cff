"""`ykt hall dispenser-sticker` as staff run it, and the phone's scanner reading the result: the QR
code carries the dispenser's id and Bluetooth address, scans back with zxing-cpp (also shrunk and
scratched: error correction H), and bad requests get a clear message and no file."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest
from PIL import Image, ImageDraw

from firmware.core import wallets, water_grants
from simulators import sticker_scan
from sync_server import db as dbmod, registry
from sync_server.services import sticker

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)


def _run(data_dir, *args, lang="zh"):
    result = subprocess.run([sys.executable, "-m", "sync_server", *args, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, env=dict(os.environ, YKT_LANG=lang))
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def site(tmp_path):
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    conn = dbmod.connect(dbmod.store_location(str(data_dir)))
    try:
        water = registry.add_merchant(conn, "开水房", "boiler room", wallets.CATEGORY_WATER)
        canteen = registry.add_merchant(conn, "一食堂", "canteen 1", wallets.CATEGORY_CANTEEN)
        dispenser_id = registry.register_terminal(conn, water)
        pos_id = registry.register_terminal(conn, canteen)
    finally:
        conn.close()
    return data_dir, dispenser_id, pos_id


def test_the_sticker_scans_back_to_its_dispenser(site, tmp_path):
    data_dir, dispenser_id, _pos = site
    png, svg = tmp_path / "sticker.png", tmp_path / "sticker.svg"
    for path in (png, svg):
        code, out = _run(data_dir, "hall", "dispenser-sticker", "--terminal", str(dispenser_id), "--out", str(path))
        assert code == 0 and "已生成开水机 %d 的二维码贴纸" % dispenser_id in out
    address = water_grants.static_address(dispenser_id)
    assert sticker_scan.scan_sticker(str(png)) == (dispenser_id, address)
    root = ElementTree.parse(svg).getroot()
    texts = [element.text for element in root.iter() if element.tag.endswith("text")]
    assert texts == list(sticker.caption(dispenser_id))
    # a worn sticker: photographed small, a third of the code's right half scratched off
    with Image.open(png) as image:
        worn = image.convert("L").resize((image.width // 3, image.height // 3))
    draw = ImageDraw.Draw(worn)
    draw.rectangle((worn.width * 0.55, worn.height * 0.35, worn.width * 0.7, worn.height * 0.5), fill=255)
    worn_path = tmp_path / "worn.png"
    worn.save(worn_path)
    assert sticker_scan.scan_sticker(str(worn_path)) == (dispenser_id, address)


def test_bad_requests_are_refused_with_a_clear_message_and_no_file(site, tmp_path):
    data_dir, dispenser_id, pos_id = site
    cases = [(["--terminal", str(pos_id), "--out", str(tmp_path / "a.png")], "is not a water dispenser"),
             (["--terminal", "99999", "--out", str(tmp_path / "b.png")], "does not exist"),
             (["--terminal", str(dispenser_id), "--out", str(tmp_path / "c.pdf")], "must end in .png or .svg"),
             (["--terminal", str(dispenser_id), "--out", str(tmp_path / "missing" / "d.png")], "no such folder")]
    for arguments, message in cases:
        code, out = _run(data_dir, "hall", "dispenser-sticker", *arguments, lang="en")
        assert code != 0 and message in out and "Traceback" not in out, out
        assert not os.path.exists(arguments[-1])


def test_the_scanner_says_what_is_wrong_with_a_photo(tmp_path):
    with pytest.raises(ValueError, match="no such image"):
        sticker_scan.scan_sticker(str(tmp_path / "none.png"))
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    with pytest.raises(ValueError, match="no QR code"):
        sticker_scan.scan_sticker(str(blank))
    other = tmp_path / "other.png"
    import segno
    segno.make_qr("https://example.com/menu").save(str(other), scale=8)
    with pytest.raises(ValueError, match="not a water dispenser"):
        sticker_scan.scan_sticker(str(other))
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        sticker_scan.scan_sticker(str(text))


def _worn(image, symbol_px):
    """A photo of a worn sticker: a third of the size, the middle of the code (a tenth of it, the
    data modules) scraped white."""
    worn = image.convert("L").resize((image.width // 3, image.height // 3))
    side = symbol_px // 3
    ImageDraw.Draw(worn).rectangle((side * 0.35, side * 0.35, side * 0.65, side * 0.65), fill=255)
    return worn


@pytest.mark.parametrize("dispenser_id", [1, 7, 4242, 4294967295])
def test_error_correction_h_is_what_keeps_a_worn_sticker_readable(dispenser_id, tmp_path):
    """The same wear on the same text: the sticker (level H) still scans, a level L code does not."""
    sticker.render(dispenser_id, str(tmp_path / "h.png"))
    symbol_px = sticker.code(dispenser_id).symbol_size(scale=sticker.SCALE, border=sticker.BORDER_MODULES)[0]
    with Image.open(tmp_path / "h.png") as image:
        _worn(image, symbol_px).save(tmp_path / "h-worn.png")
    expected = (dispenser_id, water_grants.static_address(dispenser_id))
    assert sticker_scan.scan_sticker(str(tmp_path / "h-worn.png")) == expected

    import segno
    weak = segno.make_qr(water_grants.sticker_text(dispenser_id, water_grants.static_address(dispenser_id)),
                         error="l", boost_error=False)
    weak.save(str(tmp_path / "l.png"), scale=sticker.SCALE, border=sticker.BORDER_MODULES)
    with Image.open(tmp_path / "l.png") as image:
        assert sticker_scan.scan_sticker(str(tmp_path / "l.png")) == expected      # it scans when new
        _worn(image, image.width).save(tmp_path / "l-worn.png")
    with pytest.raises(ValueError, match="no QR code"):
        sticker_scan.scan_sticker(str(tmp_path / "l-worn.png"))
