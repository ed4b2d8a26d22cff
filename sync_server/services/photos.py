"""人脸采集 and 证件照采集: a cardholder's face photo and ID photo, checked on the server and kept on
the person record.

    check_photo(kind, image_bytes) -> (ok, reason_code, facts)
    store_photo(conn, person_id, kind, image_bytes, source, operator=None) -> what was stored
    photo_summary(conn, person_id) -> {kind: {width, height, checked_ms, source, ...} or None}
    photo_image(conn, person_id, kind) -> the stored JPEG bytes, or ServiceError photo_missing

Kinds: "face" (人脸采集, for recognising the holder) and "id_photo" (证件照: one frontal face, larger
in the frame and near its middle). The phone app (POST /api/v1/photos/<kind>, sync_server/
cardholder_api.py) and the service hall (the person page, sync_server/web/hall_pages.py) send the
photo through the same checks; a refused photo stores nothing and answers one reason code with its
Chinese and English message (MESSAGES below).

The checks, in this order, each its own code:

  1. the bytes: not empty, at most MAX_PHOTO_BYTES, JPEG or PNG by their magic bytes (GIF, WebP,
     HEIC, BMP, TIFF: photo_format; anything else: photo_not_image)
  2. the header, read here before any pixel is decoded (a few-KB PNG may claim 100000 x 100000
     pixels, a decompression bomb): both sides at most MAX_SIDE_PX, the short side at least
     MIN_SHORT_SIDE_PX; a JPEG must reach its end marker (a cut-off upload is photo_corrupt)
  3. decoding with OpenCV (cv2.imdecode, which turns the picture upright by its EXIF orientation;
     a large JPEG is decoded already reduced), scaled to at most WORK_MAX_SIDE_PX
  4. the light of the whole frame (photo_too_dark / photo_too_bright before looking for a face,
     so a black frame is "too dark", not "no face")
  5. faces with OpenCV's own Haar cascade (haarcascade_frontalface_default.xml, shipped inside the
     opencv-python-headless wheel: nothing is downloaded): none, or more than one of comparable size
  6. the face's share of the frame (its width over the frame's short side; per kind), and for an
     ID photo its place (near the middle)
  7. the face's light: the face against the rest of the frame (backlit), then the mean and spread
     of luminance on the face (too dark, too bright)
  8. sharpness: the variance of the Laplacian on the face, scaled down to FACE_NORM_PX square first
     so the measure does not depend on the photo's resolution, and to a standard contrast, so a dim
     face does not count as a blurred one

The thresholds are named below with what they gave on the sample photos scikit-image bundles
(skimage.data.astronaut(): NASA's public-domain portrait of Eileen Collins, 512 x 512, one frontal
face; tests/test_photos.py builds every case from it and the other bundled images).

What is stored is not what was sent: the decoded picture, upright, at most WORK_MAX_SIDE_PX on its
long side, encoded again as a baseline JPEG (STORE_JPEG_QUALITY), so no EXIF (GPS position, phone
make, time) and no other metadata of the upload survives. Table person_photos (migration 0081)
keeps per person and kind the current photo and the one before it; a new photo replaces the older
of the two.

OpenCV and numpy are imported on first use, not with the server's modules; the detector is one
per thread (a CascadeClassifier is not safe to share between threads), and OpenCV runs single
threaded (cv2.setNumThreads(1)): the server's worker processes and threads are the parallelism.
"""
import hashlib
import struct
import threading

from sync_server import db as dbmod
from sync_server.services import ServiceError, register_messages

KINDS = ("face", "id_photo")
KIND_NAMES = {"face": ("人脸照片", "face photo"), "id_photo": ("证件照", "ID photo")}
SOURCES = ("app", "hall")
SLOTS = ("current", "previous")

# --- 1, 2: the bytes and the header -----------------------------------------------------------------
# The server takes no request body over app.MAX_REQUEST_BYTES (1 MiB; waitress closes the connection
# past twice that), so a photo is at most that too: the app sends the camera's picture scaled to
# about 2000 px at JPEG quality ~85 (0.3-0.8 MB), which is plenty for these checks.
MAX_PHOTO_BYTES = 1024 * 1024
MAX_SIDE_PX = 4096              # each side; 16.7 Mpx decoded is 50 MB of BGR at most
MIN_SHORT_SIDE_PX = 480         # astronaut: 512 (accepted); scaled to 400: refused
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OTHER_FORMATS = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
                 (b"MM\x00*", "TIFF"))
# JPEG start-of-frame markers (the frame's size): SOF0-3, 5-7, 9-11, 13-15 (not DHT C4, JPG C8, DAC CC)
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_MAX_SEGMENTS = 1000        # markers read before the image data; real files have about ten

# --- 3: the work copy -------------------------------------------------------------------------------
WORK_MAX_SIDE_PX = 1024         # checked and stored at this size at most (long side)
STORE_JPEG_QUALITY = 90         # astronaut stored: 512 x 512, 68 KB
STORE_JPEG_QUALITIES = (STORE_JPEG_QUALITY, 80, 70, 60)   # lower only if a noisy picture would pass...
MAX_STORED_BYTES = 512 * 1024   # ...this (the table's own bound is MAX_PHOTO_BYTES)

# --- 4: the whole frame (luminance 0-255, BT.601 from BGR) ---------------------------------------------
FRAME_MIN_MEAN = 30             # astronaut 115; darkened x0.3: 34 (the face's own check refuses it),
                                # x0.2: 23 -> too dark before any face is looked for
FRAME_MAX_MEAN = 235            # astronaut 115, x2 overexposed 172; a white-background ID photo ~200
# --- 5: the detector (run on a copy at most DETECT_MAX_SIDE_PX, histogram-equalised) ------------------
CASCADE_FILE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE_PX = 480
DETECT_SCALE_FACTOR = 1.1
DETECT_MIN_NEIGHBORS = 8        # 5 found a second "face" in the astronaut at 400, 480 and 600 px and
                                # six in skimage's coins; 8: exactly one at every size from 300 to 4096
                                # px, both astronauts side by side, none in coffee, camera, chelsea, coins
DETECT_MIN_FACE_SHARE = 0.08    # smaller faces are not looked for (photo_no_face)
OTHER_FACE_MIN_RATIO = 0.5      # a second face counts when at least half the width of the largest
# --- 6: the face in the frame: its box width / the frame's short side --------------------------------
FACE_SHARE = {"face": (0.15, 0.75),        # astronaut 0.19; with 128 px added around it 0.13 (too
                                           # small); cropped close, 0.73 (accepted) and 0.80 (too large)
              "id_photo": (0.30, 0.70)}    # astronaut 0.19 (too small); head and shoulders 0.45; close 0.73 (too large)
ID_PHOTO_MAX_CENTRE_OFFSET = 0.20          # |face centre - frame centre| / frame width: head and
                                           # shoulders 0.00; the same crop 70 px to the side 0.29
# --- 7: the face's light --------------------------------------------------------------------------------
FACE_MIN_MEAN = 50              # astronaut's face 155; darkened x0.6: 92, x0.4: 61 (accepted); x0.3: 46
FACE_MAX_MEAN = 215             # brightened x1.3: 189 (accepted); x2: 221, x3: 237
FACE_MIN_STD = 14               # spread; astronaut 53, x0.3: 16, x0.2: 11; under it the face has no
                                # detail left: too dark below mid-grey, too bright above
FACE_MAX_CLIPPED = 0.25         # share of the face at 250 or more: astronaut 0.00, x1.3: 0.19 (accepted),
                                # x1.5: 0.40, x2: 0.60
BACKLIT_FACE_MAX_MEAN = 90      # backlit: a face this dark...
BACKLIT_MIN_GAP = 80            # ...and the rest of the frame this much brighter. Astronaut: face 155,
                                # rest 114; head and shoulders on near-white (245) with the person at
                                # x0.3-x0.5: face 45-76, rest 191-193 (backlit); at x0.6: face 91
                                # (accepted). A well-lit face on a white ID background: 152 against 208.
# --- 8: sharpness -----------------------------------------------------------------------------------------
FACE_NORM_PX = 64               # every accepted face is larger (>= 0.15 x 480 = 72 px), so the face is
                                # only ever scaled down, and blur is measured relative to the face's width
FACE_REF_STD = 50.0             # the Laplacian's variance is scaled as if the face's spread were this
                                # (a dim face is not a blurred one: x0.4 darker measured 32 unscaled)
MIN_SHARPNESS = 150             # variance of the Laplacian of the face at 64 x 64. Sharp: astronaut 907
                                # (512 px), 545 (480), 872 (1024), 848 (2048, JPEG q70); the smallest face
                                # allowed (78 px in 490) 501; head and shoulders 803. Gaussian blur of
                                # sigma 1% of the face's width: 222-244 (accepted); 1.3%: 136; 1.4%: 122;
                                # 1.6%: 120; 2%: 71 (refused)

_ERROR_STATUS = 422

MESSAGES = {
    "photo_kind_unknown": (404, "没有这种照片（可采集：人脸照片 face、证件照 id_photo）",
                           "no such kind of photo (face or id_photo)"),
    "photo_missing": (404, "尚未采集该照片", "no such photo has been taken yet"),
    "photo_content_type": (415, "请以 image/jpeg 或 image/png 上传照片",
                           "send the photo as image/jpeg or image/png"),
    "photo_too_large": (413, "照片文件过大（不超过 %d KB），请压缩后重新上传" % (MAX_PHOTO_BYTES // 1024),
                        "the photo file is too large (at most %d KB); compress it and send it again"
                        % (MAX_PHOTO_BYTES // 1024)),
    "photo_not_image": (_ERROR_STATUS, "上传的内容不是图片", "the upload is not an image"),
    "photo_format": (_ERROR_STATUS, "照片格式不支持：只接受 JPEG 或 PNG",
                     "unsupported image format: JPEG or PNG only"),
    "photo_corrupt": (_ERROR_STATUS, "照片文件已损坏或不完整，请重新拍摄",
                      "the image is damaged or incomplete; take it again"),
    "photo_too_many_pixels": (_ERROR_STATUS, "照片尺寸过大（长、宽均不超过 %d 像素）" % MAX_SIDE_PX,
                              "the picture is too big (at most %d pixels each way)" % MAX_SIDE_PX),
    "photo_too_small": (_ERROR_STATUS, "照片分辨率过低（短边至少 %d 像素）" % MIN_SHORT_SIDE_PX,
                        "the picture is too small (at least %d pixels on the short side)" % MIN_SHORT_SIDE_PX),
    "photo_no_face": (_ERROR_STATUS, "未检测到人脸：请正对镜头，露出完整面部",
                      "no face found: face the camera with the whole face visible"),
    "photo_many_faces": (_ERROR_STATUS, "检测到多张人脸：画面中只能有本人",
                         "more than one face: only the cardholder may be in the picture"),
    "photo_face_too_small": (_ERROR_STATUS, "人脸太小：请靠近镜头，证件照请让头肩占满画面",
                             "the face is too small: come closer (an ID photo shows head and shoulders)"),
    "photo_face_too_large": (_ERROR_STATUS, "人脸太大或不完整：请离镜头远一些",
                             "the face is too large or cut off: move back from the camera"),
    "photo_face_off_centre": (_ERROR_STATUS, "证件照人脸未居中：请把脸放在画面中间",
                              "ID photo: the face is not in the middle of the picture"),
    "photo_too_dark": (_ERROR_STATUS, "光线太暗：请到明亮处拍摄", "too dark: take the photo in better light"),
    "photo_too_bright": (_ERROR_STATUS, "曝光过度：请避开强光直射", "overexposed: keep out of direct strong light"),
    "photo_backlit": (_ERROR_STATUS, "逆光：脸部太暗而背景太亮，请面向光源拍摄",
                      "backlit: the face is dark against a bright background; face the light"),
    "photo_blurry": (_ERROR_STATUS, "照片模糊：请保持手机稳定，对焦后重拍",
                     "the photo is blurred: hold the phone still and let it focus"),
}
register_messages(MESSAGES)
REFUSALS = tuple(code for code, entry in MESSAGES.items()
                 if entry[0] in (_ERROR_STATUS, 413))     # what check_photo may answer


# --- OpenCV, loaded on first use ---------------------------------------------------------------------

_loaded = {}
_per_thread = threading.local()
_load_lock = threading.Lock()


def _cv():
    """(cv2, numpy), imported once; OpenCV single threaded (module text)."""
    if not _loaded:
        with _load_lock:
            if not _loaded:
                import cv2
                import numpy
                cv2.setNumThreads(1)
                _loaded.update(cv2=cv2, np=numpy)
    return _loaded["cv2"], _loaded["np"]


def _detector():
    detector = getattr(_per_thread, "detector", None)
    if detector is None:
        cv2, _ = _cv()
        detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if detector.empty():
            raise RuntimeError("OpenCV's %s is missing from %s (opencv-python-headless 4.x bundles it)"
                               % (CASCADE_FILE, cv2.data.haarcascades))
        _per_thread.detector = detector
    return detector


# --- 1, 2: bytes and header ----------------------------------------------------------------------------

class _Refused(Exception):
    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


def image_format(data):
    """'jpeg', 'png', or _Refused photo_format (another image format) / photo_not_image."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if any(data.startswith(magic) for magic, _ in OTHER_FORMATS) or \
            (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or data[4:8] == b"ftyp":   # WebP; HEIC, AVIF
        raise _Refused("photo_format")
    raise _Refused("photo_not_image")


def header_size(data, fmt):
    """(width, height) from the file's header, without decoding; _Refused photo_corrupt when the
    header cannot be read (or a JPEG ends before its end marker)."""
    if fmt == "png":
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise _Refused("photo_corrupt")
        width, height = struct.unpack(">II", data[16:24])
        if not width or not height or b"IEND" not in data[-64:]:
            raise _Refused("photo_corrupt")
        return width, height
    size, position = None, 2
    for _ in range(JPEG_MAX_SEGMENTS):
        if position >= len(data) or data[position] != 0xFF:         # a marker must start here
            break
        while position < len(data) and data[position] == 0xFF:      # FF, and any fill bytes
            position += 1
        if position >= len(data):
            break
        marker = data[position]
        position += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:                 # no length
            continue
        if marker == 0xD9 or position + 2 > len(data):
            break
        length = struct.unpack(">H", data[position:position + 2])[0]
        if length < 2 or position + length > len(data):
            break
        if marker in JPEG_SOF and length >= 7:
            height, width = struct.unpack(">HH", data[position + 3:position + 7])
            size = (width, height)
        if marker == 0xDA:                                           # the image data starts
            # the entropy-coded data cannot hold FF D9 (an FF there is FF 00 or a restart marker),
            # so without one after it the file was cut off
            if size is None or not size[0] or not size[1] or data.find(b"\xff\xd9", position + length) < 0:
                break
            return size
        position += length
    raise _Refused("photo_corrupt")


# --- 3 to 8: the picture ---------------------------------------------------------------------------

def _decode(data, fmt, width, height):
    """The picture upright (EXIF orientation applied by OpenCV), BGR, long side <= WORK_MAX_SIDE_PX."""
    cv2, np = _cv()
    reduce = 1
    if fmt == "jpeg":       # libjpeg scales while decoding: a 4096-px photo never exists in full
        while reduce < 8 and max(width, height) // (reduce * 2) >= WORK_MAX_SIDE_PX:
            reduce *= 2
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.ndim != 3 or min(image.shape[:2]) < 1:
        raise _Refused("photo_corrupt")
    scale = WORK_MAX_SIDE_PX / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    return image


def _faces(gray):
    """Face boxes (x, y, w, h) in `gray`'s pixels, largest first."""
    cv2, _ = _cv()
    height, width = gray.shape
    scale = min(1.0, DETECT_MAX_SIDE_PX / max(height, width))
    small = gray if scale >= 1 else cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                                               interpolation=cv2.INTER_AREA)
    small = cv2.equalizeHist(small)
    smallest = max(24, int(min(small.shape) * DETECT_MIN_FACE_SHARE))
    found = _detector().detectMultiScale(small, scaleFactor=DETECT_SCALE_FACTOR, minNeighbors=DETECT_MIN_NEIGHBORS,
                                         minSize=(smallest, smallest))
    boxes = [tuple(int(round(value / scale)) for value in box) for box in found]
    return sorted(boxes, key=lambda box: -box[2])


def _examine(kind, data):
    """(reason code or None, facts, work picture or None): every check of the module text, in order."""
    facts = {"kind": kind, "bytes": len(data) if isinstance(data, (bytes, bytearray)) else None}
    try:
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise _Refused("photo_not_image")
        data = bytes(data)
        if len(data) > MAX_PHOTO_BYTES:
            raise _Refused("photo_too_large")
        fmt = facts["format"] = image_format(data)
        width, height = header_size(data, fmt)
        facts.update(source_width=width, source_height=height)
        if max(width, height) > MAX_SIDE_PX:
            raise _Refused("photo_too_many_pixels")
        if min(width, height) < MIN_SHORT_SIDE_PX:
            raise _Refused("photo_too_small")
        image = _decode(data, fmt, width, height)
        return _examine_picture(kind, image, facts)
    except _Refused as refusal:
        return refusal.code, facts, None


def _examine_picture(kind, image, facts):
    cv2, np = _cv()
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    height, width = gray.shape
    facts.update(width=width, height=height, frame_mean=round(float(gray.mean()), 1))
    if facts["frame_mean"] < FRAME_MIN_MEAN:
        return "photo_too_dark", facts, None
    if facts["frame_mean"] > FRAME_MAX_MEAN:
        return "photo_too_bright", facts, None
    boxes = _faces(gray)
    facts["faces_found"] = len(boxes)
    if not boxes:
        return "photo_no_face", facts, None
    x, y, w, h = boxes[0]
    x, y = max(0, x), max(0, y)
    w, h = min(w, width - x), min(h, height - y)
    facts["face"] = {"x": x, "y": y, "w": w, "h": h}
    if sum(1 for box in boxes if box[2] >= OTHER_FACE_MIN_RATIO * w) > 1:
        return "photo_many_faces", facts, None
    share = facts["face_share"] = round(w / min(width, height), 3)
    low, high = FACE_SHARE[kind]
    if share < low:
        return "photo_face_too_small", facts, None
    if share > high:
        return "photo_face_too_large", facts, None
    if kind == "id_photo":
        offset = facts["centre_offset"] = round(abs((x + w / 2) / width - 0.5), 3)
        if offset > ID_PHOTO_MAX_CENTRE_OFFSET:
            return "photo_face_off_centre", facts, None
    face = gray[y:y + h, x:x + w]
    face_mean, face_std = float(face.mean()), float(face.std())
    outside = np.ones(gray.shape, dtype=bool)
    outside[y:y + h, x:x + w] = False
    surround_mean = float(gray[outside].mean()) if outside.any() else face_mean
    facts.update(face_mean=round(face_mean, 1), face_std=round(face_std, 1), surround_mean=round(surround_mean, 1),
                 face_clipped=round(float((face >= 250).mean()), 3))
    if face_mean < BACKLIT_FACE_MAX_MEAN and surround_mean - face_mean >= BACKLIT_MIN_GAP:
        return "photo_backlit", facts, None
    if face_mean < FACE_MIN_MEAN or (face_std < FACE_MIN_STD and face_mean < 128):
        return "photo_too_dark", facts, None
    if face_mean > FACE_MAX_MEAN or facts["face_clipped"] > FACE_MAX_CLIPPED or face_std < FACE_MIN_STD:
        return "photo_too_bright", facts, None
    normalised = cv2.resize(face, (FACE_NORM_PX, FACE_NORM_PX),
                            interpolation=cv2.INTER_AREA if w > FACE_NORM_PX else cv2.INTER_LINEAR)
    contrast = (FACE_REF_STD / max(face_std, 1.0)) ** 2      # a dim face is not a blurred one
    sharpness = facts["sharpness"] = round(float(cv2.Laplacian(normalised, cv2.CV_64F).var()) * contrast, 1)
    if sharpness < MIN_SHARPNESS:
        return "photo_blurry", facts, None
    return None, facts, image


def check_photo(kind, image_bytes):
    """(ok, reason_code, facts): reason_code None when the photo passes; facts are what was measured
    (sizes, the face box in the checked picture's pixels, share, light, sharpness), also on refusal."""
    if kind not in KINDS:
        raise ServiceError("photo_kind_unknown")
    reason, facts, _ = _examine(kind, image_bytes)
    return reason is None, reason, facts


def _encode(image):
    cv2, _ = _cv()
    encoded = None
    for quality in STORE_JPEG_QUALITIES:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        if len(encoded) <= MAX_STORED_BYTES:
            break
    return encoded.tobytes()


# --- the person record -------------------------------------------------------------------------------

def store_photo(conn, person_id, kind, image_bytes, source, operator=None, now_ms=None, also=None):
    """Check the photo and keep it as the person's current one of `kind` (the current one becomes the
    previous, the previous is dropped). A refusal raises ServiceError(reason) and stores nothing.
    The checks run before any transaction (the writer lock is not held while OpenCV works); `also(conn,
    stored)` runs inside the storing transaction (the hall's staff log line). Returns {kind, width,
    height, face: {x, y, w, h}, checked_ms, source, sha256, bytes}."""
    if kind not in KINDS:
        raise ServiceError("photo_kind_unknown")
    assert source in SOURCES, source
    reason, facts, image = _examine(kind, image_bytes)
    if reason is not None:
        raise ServiceError(reason)
    jpeg = _encode(image)
    face = facts["face"]
    stored = {"kind": kind, "width": facts["width"], "height": facts["height"], "face": dict(face),
              "checked_ms": dbmod.now_ms() if now_ms is None else now_ms, "source": source,
              "sha256": hashlib.sha256(jpeg).hexdigest(), "bytes": len(jpeg)}
    with dbmod.joined_transaction(conn):
        if conn.execute("SELECT 1 FROM persons WHERE id = ?", (person_id,)).fetchone() is None:
            raise ServiceError("account_unknown")
        conn.execute("DELETE FROM person_photos WHERE person_id = ? AND kind = ? AND slot = 'previous'",
                     (person_id, kind))
        conn.execute("UPDATE person_photos SET slot = 'previous' WHERE person_id = ? AND kind = ? AND slot = 'current'",
                     (person_id, kind))
        conn.execute("INSERT INTO person_photos (person_id, kind, slot, image, width, height, face_x, face_y, face_w, "
                     "face_h, checked_ms, source, operator, sha256) VALUES (?, ?, 'current', ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                     "?, ?)", (person_id, kind, jpeg, stored["width"], stored["height"], face["x"], face["y"],
                               face["w"], face["h"], stored["checked_ms"], source, operator, stored["sha256"]))
        if also is not None:
            also(conn, stored)
    return stored


def photo_summary(conn, person_id):
    """{kind: None, or {kind, width, height, face, checked_ms, source, operator, sha256}} of the
    person's current photos (not the images)."""
    summary = dict.fromkeys(KINDS)
    for row in conn.execute("SELECT kind, width, height, face_x, face_y, face_w, face_h, checked_ms, source, operator, "
                            "sha256 FROM person_photos WHERE person_id = ? AND slot = 'current'", (person_id,)):
        if row[0] in summary:
            summary[row[0]] = {"kind": row[0], "width": row[1], "height": row[2],
                               "face": {"x": row[3], "y": row[4], "w": row[5], "h": row[6]},
                               "checked_ms": row[7], "source": row[8], "operator": row[9], "sha256": row[10]}
    return summary


def photo_image(conn, person_id, kind):
    """The person's current photo of `kind` as JPEG bytes; ServiceError photo_missing when none."""
    if kind not in KINDS:
        raise ServiceError("photo_kind_unknown")
    row = conn.execute("SELECT image FROM person_photos WHERE person_id = ? AND kind = ? AND slot = 'current'",
                       (person_id, kind)).fetchone()
    if row is None:
        raise ServiceError("photo_missing")
    return bytes(row[0])
