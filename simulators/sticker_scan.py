"""The phone's scanner: a photo of a dispenser's sticker -> (dispenser id, Bluetooth address).

zxing-cpp reads the QR code from the image (Pillow opens the file), and
firmware.core.water_grants.parse_sticker checks that it is one of ours. A missing file, an image with
no code in it and a code that is not a dispenser's each get their own message, Chinese first.
`read_qr_texts` is the image-reading half alone, shared with the canteen scanner emulator
(simulators/scanner_emulator.py), which decodes a phone's screenshot of its payment code with it.
"""
from firmware.core import water_grants


def read_qr_texts(path):
    """The texts of the valid QR codes (and other symbols zxing-cpp finds) in the image at `path`,
    in zxing-cpp's order; ValueError, Chinese first, for a missing or unreadable file or an image
    with none."""
    import zxingcpp
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            found = zxingcpp.read_barcodes(image.convert("L"))
    except FileNotFoundError:
        raise ValueError("找不到图片 / no such image: %s" % path)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError("无法读取图片 / cannot read the image %s: %s" % (path, error))
    codes = [barcode.text for barcode in found if barcode.valid]
    if not codes:
        raise ValueError("图片中没有二维码 / no QR code in the image: %s" % path)
    return codes


def scan_sticker(path):
    codes = read_qr_texts(path)
    for text in codes:
        try:
            return water_grants.parse_sticker(text)
        except water_grants.WaterMessageError:
            continue
    raise ValueError("不是开水机二维码 / not a water dispenser's code: %s" % codes[0][:60])
