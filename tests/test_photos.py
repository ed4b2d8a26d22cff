"""人脸采集 and 证件照采集 (sync_server/services/photos.py, migration 0081): photos checked on the server
for one face, size, sharpness and light with OpenCV's bundled Haar cascade, stored without metadata.

Every picture comes from the photos scikit-image bundles (nothing is downloaded): skimage.data.astronaut()
is NASA's public-domain portrait of Eileen Collins (512 x 512, one frontal face); coffee(), camera() and
chelsea() (a cat) have no human face. The cases are built from them: two astronauts side by side, blurred,
darkened, overexposed, backlit, scaled down, cropped, padded, rotated with an EXIF orientation, cut off,
and files that only claim to be large. Then: the checks in process; the person record on each store
(current and previous photo, EXIF gone, a refusal changes nothing); the cardholder API over the real
server (POST/GET /api/v1/photos..., another holder sees nothing); the service hall's pages with Flask's
test client (role, upload, no-store image route, the reissue confirmation) and in headless Chromium.
"""
import io
import struct
import zlib

import cv2
import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from browser import by_id, chromium, click, fill
from conftest import database_snapshot
from server_process import running_server
from sync_server import app as app_module, db as dbmod, pin_rules, registry, serving
from sync_server.app import create_app
from sync_server.cli import init_data_dir
from sync_server import cli_common
from sync_server.services import MESSAGES, ServiceError, card_jobs, photos
from sync_server.web import auth
from sync_server.web.hall_pages import PHOTO_FORM_ALLOWANCE
from test_cardholder_api import Holder, _error

# --- the pictures -----------------------------------------------------------------------------------

ASTRONAUT = skimage.data.astronaut()                    # RGB, 512 x 512, her face at about (177, 66) 93 px


def _bgr(rgb):
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb


def jpeg(rgb, quality=92):
    ok, encoded = cv2.imencode(".jpg", _bgr(rgb), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def png(rgb):
    ok, encoded = cv2.imencode(".png", _bgr(rgb) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb)
    assert ok
    return encoded.tobytes()


def scaled(rgb, width, height):
    shrink = width < rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def exposed(rgb, factor):
    return np.clip(rgb.astype(float) * factor, 0, 255).astype(np.uint8)


def blurred(rgb, sigma):
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def head_and_shoulders(left=110):
    """The astronaut cropped as an ID photo (face in the middle, 0.45 of the width), 483 x 609."""
    return scaled(ASTRONAUT[10:300, left:left + 230], 483, 609)


def backlit(factor=0.45):
    """Head and shoulders against a near-white window, the person in shadow."""
    person = head_and_shoulders().astype(float)
    rows, columns = np.mgrid[:609, :483]
    ellipse = ((columns - 240) / 150) ** 2 + ((rows - 260) / 230) ** 2
    background = np.clip((ellipse - 0.8) / 0.4, 0, 1)[..., None]
    return np.clip(person * factor * (1 - background) + 245 * background, 0, 255).astype(np.uint8)


def white_background_id_photo():
    person = head_and_shoulders()
    rows, columns = np.mgrid[:609, :483]
    person[((columns - 240) / 150) ** 2 + ((rows - 260) / 230) ** 2 > 1] = 250
    return person


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width, height):
    """A valid-looking PNG of a few hundred bytes whose header claims width x height (a decompression
    bomb's header: decoded it would need width * height * 3 bytes)."""
    return (photos.PNG_MAGIC + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _chunk(b"IEND", b""))


def jpeg_claiming(width, height):
    """The astronaut's JPEG with its frame header (SOF0) rewritten to claim width x height."""
    data = bytearray(jpeg(ASTRONAUT))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def exif_jpeg(rgb, orientation=1):
    """A JPEG (Pillow) with EXIF: make, model, a GPS position and the given orientation tag."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "PhoneMaker", "Model X", orientation
    exif[0x8825] = {1: "N", 2: (39.0, 54.0, 27.0), 3: "E", 4: (116.0, 23.0, 5.0)}     # GPS IFD
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def gif(rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "GIF")
    return buffer.getvalue()


# --- the checks, in process ---------------------------------------------------------------------------

def test_the_astronaut_is_a_face_photo_and_her_head_and_shoulders_an_id_photo():
    ok, reason, facts = photos.check_photo("face", jpeg(ASTRONAUT))
    assert (ok, reason) == (True, None)
    face = facts["face"]
    assert abs(face["x"] - 177) <= 8 and abs(face["y"] - 66) <= 8 and 85 <= face["w"] <= 105
    assert (facts["width"], facts["height"], facts["faces_found"]) == (512, 512, 1)
    assert facts["sharpness"] > 3 * photos.MIN_SHARPNESS
    assert photos.FACE_MIN_MEAN < facts["face_mean"] < photos.FACE_MAX_MEAN
    # the same photo as an ID photo: her face is under a fifth of the frame
    assert photos.check_photo("id_photo", jpeg(ASTRONAUT))[:2] == (False, "photo_face_too_small")
    for data in (jpeg(head_and_shoulders()), png(head_and_shoulders())):
        for kind in photos.KINDS:
            ok, reason, facts = photos.check_photo(kind, data)
            assert ok, (kind, reason, facts)
            assert 0.35 < facts["face_share"] < 0.55


@pytest.mark.parametrize("name, picture", [
    ("480 px short side", lambda: scaled(ASTRONAUT, 480, 480)),
    ("1024 px", lambda: scaled(ASTRONAUT, 1024, 1024)),
    ("3000 px, decoded reduced", lambda: scaled(ASTRONAUT, 3000, 3000)),
    ("a little dim (x0.6)", lambda: exposed(ASTRONAUT, 0.6)),
    ("dim (x0.4)", lambda: exposed(ASTRONAUT, 0.4)),
    ("a little bright (x1.3)", lambda: exposed(ASTRONAUT, 1.3)),
    ("slightly soft (blur 1% of the face)", lambda: blurred(head_and_shoulders(), 2)),
    ("grey", lambda: cv2.cvtColor(ASTRONAUT, cv2.COLOR_RGB2GRAY)),
    ("with 32 px around her", lambda: cv2.copyMakeBorder(ASTRONAUT, 32, 32, 32, 32, cv2.BORDER_REFLECT)),
])
def test_ordinary_variations_pass(name, picture):
    data = jpeg(picture(), quality=80)
    assert len(data) <= photos.MAX_PHOTO_BYTES
    ok, reason, facts = photos.check_photo("face", data)
    assert ok, (name, reason, facts)


def test_an_id_photo_on_a_white_background_is_not_taken_for_backlit():
    ok, reason, facts = photos.check_photo("id_photo", jpeg(white_background_id_photo()))
    assert ok, (reason, facts)
    assert facts["surround_mean"] > facts["face_mean"] + 40        # brighter around it, and that is fine


REFUSED = [
    # (case, kind, the bytes, the reason)
    ("a coffee cup", "face", lambda: jpeg(scaled(skimage.data.coffee(), 720, 480)), "photo_no_face"),
    ("the cameraman from behind his camera", "face", lambda: png(skimage.data.camera()), "photo_no_face"),
    ("a cat", "face", lambda: jpeg(scaled(skimage.data.chelsea(), 902, 600)), "photo_no_face"),
    ("two astronauts side by side", "face", lambda: jpeg(np.hstack([ASTRONAUT, ASTRONAUT])), "photo_many_faces"),
    ("two astronauts, one mirrored", "id_photo",
     lambda: jpeg(np.hstack([head_and_shoulders(), cv2.flip(head_and_shoulders(), 1)])), "photo_many_faces"),
    ("blurred (Gaussian sigma 2)", "face", lambda: jpeg(blurred(ASTRONAUT, 2)), "photo_blurry"),
    ("blurred (sigma 1.5)", "face", lambda: jpeg(blurred(ASTRONAUT, 1.5)), "photo_blurry"),
    ("ID photo blurred (sigma 3)", "id_photo", lambda: jpeg(blurred(head_and_shoulders(), 3)), "photo_blurry"),
    ("darkened x0.3", "face", lambda: jpeg(exposed(ASTRONAUT, 0.3)), "photo_too_dark"),
    ("darkened x0.15 (the frame)", "face", lambda: jpeg(exposed(ASTRONAUT, 0.15)), "photo_too_dark"),
    ("black", "face", lambda: jpeg(np.zeros((600, 600, 3), np.uint8)), "photo_too_dark"),
    ("overexposed x2", "face", lambda: jpeg(exposed(ASTRONAUT, 2)), "photo_too_bright"),
    ("overexposed x1.5", "face", lambda: jpeg(exposed(ASTRONAUT, 1.5)), "photo_too_bright"),
    ("white", "id_photo", lambda: png(np.full((600, 480, 3), 255, np.uint8)), "photo_too_bright"),
    ("backlit", "id_photo", lambda: jpeg(backlit()), "photo_backlit"),
    ("backlit and dark", "face", lambda: jpeg(backlit(0.3)), "photo_backlit"),
    ("scaled down to 400 px", "face", lambda: jpeg(scaled(ASTRONAUT, 400, 400)), "photo_too_small"),
    ("479 px short side", "face", lambda: png(scaled(ASTRONAUT, 640, 479)), "photo_too_small"),
    ("face too small (128 px around her)", "face",
     lambda: jpeg(cv2.copyMakeBorder(ASTRONAUT, 128, 128, 128, 128, cv2.BORDER_REFLECT)), "photo_face_too_small"),
    ("the astronaut as an ID photo", "id_photo", lambda: jpeg(ASTRONAUT), "photo_face_too_small"),
    ("face too large", "face", lambda: jpeg(scaled(ASTRONAUT[60:170, 170:280], 500, 500)), "photo_face_too_large"),
    ("ID photo: face too large", "id_photo", lambda: jpeg(scaled(ASTRONAUT[50:180, 160:290], 520, 520)),
     "photo_face_too_large"),
    ("ID photo off centre", "id_photo", lambda: jpeg(head_and_shoulders(left=40)), "photo_face_off_centre"),
    ("a PNG header claiming 100000 x 100000", "face", lambda: png_claiming(100000, 100000), "photo_too_many_pixels"),
    ("a PNG header claiming 4097 x 3000", "face", lambda: png_claiming(4097, 3000), "photo_too_many_pixels"),
    ("a JPEG header claiming 30000 x 20000", "face", lambda: jpeg_claiming(30000, 20000), "photo_too_many_pixels"),
    ("garbage", "face", lambda: bytes(range(256)) * 40, "photo_not_image"),
    ("empty", "face", lambda: b"", "photo_not_image"),
    ("text", "face", lambda: "这不是照片".encode(), "photo_not_image"),
    ("a GIF", "face", lambda: gif(ASTRONAUT), "photo_format"),
    ("a BMP", "face", lambda: cv2.imencode(".bmp", _bgr(ASTRONAUT))[1].tobytes(), "photo_format"),
    ("a HEIC", "face", lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(4000), "photo_format"),
    ("a WebP", "face", lambda: b"RIFF\x10\0\0\0WEBPVP8 " + bytes(4000), "photo_format"),
    ("a JPEG cut off", "face", lambda: jpeg(ASTRONAUT)[:40000], "photo_corrupt"),
    ("a JPEG cut off after its header", "face", lambda: jpeg(ASTRONAUT)[:700], "photo_corrupt"),
    ("a PNG cut off", "face", lambda: png(ASTRONAUT)[:200000], "photo_corrupt"),
    ("JPEG magic, then nothing", "face", lambda: b"\xff\xd8\xff\xe0" + bytes(5000), "photo_corrupt"),
    ("PNG magic, then nothing", "face", lambda: photos.PNG_MAGIC + bytes(5000), "photo_corrupt"),
    # libjpeg decodes damaged image data with a warning only (the rest grey): refused by what it shows
    ("a JPEG whose image data is noise", "face",
     lambda: (lambda d: d[:d.index(b"\xff\xda") + 14] + bytes(range(1, 255)) * 20 + b"\xff\xd9")(jpeg(ASTRONAUT)),
     "photo_no_face"),
    ("over 1 MiB", "face", lambda: jpeg(ASTRONAUT) + bytes(photos.MAX_PHOTO_BYTES), "photo_too_large"),
]


@pytest.mark.parametrize("case, kind, data, reason", REFUSED, ids=[case for case, *_ in REFUSED])
def test_each_refusal_has_its_own_reason(case, kind, data, reason):
    ok, code, facts = photos.check_photo(kind, data())
    assert (ok, code) == (False, reason), facts
    status, zh, en = MESSAGES[code]
    assert status in (413, 422) and zh and en


@pytest.mark.parametrize("data", [lambda: png_claiming(100000, 100000), lambda: jpeg_claiming(60000, 60000),
                                  lambda: png_claiming(40000, 200)])
def test_a_huge_claimed_size_is_refused_before_decoding(data, monkeypatch):
    def must_not_decode(*_arguments):
        raise AssertionError("decoded a picture whose header is out of bounds")
    monkeypatch.setattr(photos, "_decode", must_not_decode)
    monkeypatch.setattr(cv2, "imdecode", must_not_decode)
    ok, reason, facts = photos.check_photo("face", data())
    assert not ok and reason == "photo_too_many_pixels" and facts["source_width"] > photos.MAX_SIDE_PX


def test_a_jpeg_with_data_after_its_end_is_read_like_a_phones_motion_photo():
    data = jpeg(ASTRONAUT) + b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 100      # a video after the picture
    assert photos.check_photo("face", data)[:2] == (True, None)


def test_png_with_alpha_and_16_bits_pass():
    alpha = np.dstack([_bgr(ASTRONAUT), np.full((512, 512), 255, np.uint8)])
    assert photos.check_photo("face", cv2.imencode(".png", alpha)[1].tobytes())[0]
    deep = _bgr(ASTRONAUT).astype(np.uint16) * 257
    assert photos.check_photo("face", cv2.imencode(".png", deep)[1].tobytes())[0]


def test_an_unknown_kind_is_an_error_not_a_refusal():
    with pytest.raises(ServiceError) as error:
        photos.check_photo("passport", jpeg(ASTRONAUT))
    assert error.value.code == "photo_kind_unknown" and error.value.status == 404


def test_every_photo_message_is_chinese_first_and_bounded_statuses():
    for code in photos.MESSAGES:
        status, zh, en = MESSAGES[code]
        assert 400 <= status < 500 and any("\u4e00" <= c <= "\u9fff" for c in zh) and en.isascii()
    assert set(photos.REFUSALS) >= {code for _, _, _, code in REFUSED}


def test_the_body_limits_fit_what_the_server_reads():
    """The app (API) and the hall's form take a photo of MAX_PHOTO_BYTES; waitress reads bodies up to
    its own cap, and the app's usual one is raised for the photo routes only."""
    waitress_cap = serving.server_options(2, 30, 60, 100)[0]["max_request_body_size"]
    assert photos.MAX_PHOTO_BYTES <= app_module.MAX_REQUEST_BYTES
    assert photos.MAX_PHOTO_BYTES + PHOTO_FORM_ALLOWANCE <= waitress_cap


# --- the person record, on each store ---------------------------------------------------------------------

@pytest.fixture
def conn(database_location):
    conn = dbmod.init_db(database_location)
    yield conn
    conn.close()


def _person(conn, number="S0001"):
    return registry.add_person(conn, "王照片", 2, staff_number=number)[0]


def _stored(conn, person_id):
    return conn.execute("SELECT kind, slot, source, operator, sha256, length(image) FROM person_photos "
                        "WHERE person_id = ? ORDER BY kind, slot", (person_id,)).fetchall()


def test_stored_photos_are_upright_without_exif_and_keep_one_previous(conn):
    person_id = _person(conn)
    rotated = np.rot90(ASTRONAUT, 1)                  # on its side, as the sensor saw it...
    upload = exif_jpeg(rotated, orientation=6)        # ...with the tag that says "turn 90 degrees to view"
    assert b"PhoneMaker" in upload and Image.open(io.BytesIO(upload)).getexif()[0x0112] == 6
    stored = photos.store_photo(conn, person_id, "face", upload, "app", now_ms=1700000000000)
    assert (stored["width"], stored["height"], stored["checked_ms"], stored["source"]) == (512, 512, 1700000000000, "app")
    image = photos.photo_image(conn, person_id, "face")
    assert image[:3] == photos.JPEG_MAGIC and b"PhoneMaker" not in image and b"Exif" not in image
    assert b"GPS" not in image and b"Model X" not in image
    opened = Image.open(io.BytesIO(image))
    assert opened.size == (512, 512) and not opened.getexif() and "exif" not in opened.info
    assert np.abs(np.asarray(opened).astype(int) - ASTRONAUT.astype(int)).mean() < 8     # upright again
    assert len(image) <= photos.MAX_STORED_BYTES
    assert photos.check_photo("face", image)[0]       # what is stored passes its own checks again
    summary = photos.photo_summary(conn, person_id)
    assert summary["id_photo"] is None and summary["face"]["face"] == stored["face"]

    second = photos.store_photo(conn, person_id, "face", jpeg(scaled(ASTRONAUT, 1024, 1024)), "hall", operator="clerk")
    assert (second["width"], second["height"]) == (1024, 1024)
    third = photos.store_photo(conn, person_id, "face", png(head_and_shoulders()), "app")
    rows = _stored(conn, person_id)
    assert [(kind, slot, source, operator, sha) for kind, slot, source, operator, sha, _ in rows] == [
        ("face", "current", "app", None, third["sha256"]), ("face", "previous", "hall", "clerk", second["sha256"])]
    assert all(0 < size <= photos.MAX_STORED_BYTES for *_, size in rows)
    photos.store_photo(conn, person_id, "id_photo", jpeg(head_and_shoulders()), "hall", operator="clerk")
    assert [row[:2] for row in _stored(conn, person_id)] == [("face", "current"), ("face", "previous"),
                                                            ("id_photo", "current")]


def test_a_large_photo_is_stored_at_the_work_size(conn):
    person_id = _person(conn)
    data = jpeg(scaled(ASTRONAUT, 4096, 4096), quality=60)
    assert len(data) <= photos.MAX_PHOTO_BYTES
    stored = photos.store_photo(conn, person_id, "face", data, "app")
    assert (stored["width"], stored["height"]) == (photos.WORK_MAX_SIDE_PX, photos.WORK_MAX_SIDE_PX)
    assert 340 < stored["face"]["x"] < 370 and 180 < stored["face"]["w"] < 210      # her face, at 1024 px


def test_a_refused_photo_changes_nothing(conn, snapshot):
    person_id = _person(conn)
    photos.store_photo(conn, person_id, "face", jpeg(ASTRONAUT), "app")
    before = snapshot(conn)
    for case, kind, data, reason in REFUSED[:8] + REFUSED[-8:]:
        with pytest.raises(ServiceError) as refusal:
            photos.store_photo(conn, person_id, kind, data(), "app")
        assert refusal.value.code == reason, case
    with pytest.raises(ServiceError) as refusal:
        photos.store_photo(conn, person_id + 1000, "face", jpeg(ASTRONAUT), "app")
    assert refusal.value.code == "account_unknown"
    assert snapshot(conn) == before


def test_the_table_refuses_what_the_service_never_writes(conn):
    person_id = _person(conn)
    insert = ("INSERT INTO person_photos (person_id, kind, slot, image, width, height, face_x, face_y, face_w, "
              "face_h, checked_ms, source, sha256) VALUES (?, ?, ?, ?, 10, 10, 0, 0, 5, 5, 1, ?, 'x')")
    for kind, slot, image, source in (("passport", "current", b"x", "app"), ("face", "older", b"x", "app"),
                                      ("face", "current", b"x", "mail"),
                                      ("face", "current", bytes(photos.MAX_PHOTO_BYTES + 1), "app")):
        with pytest.raises(Exception, match="(?i)check"):        # SQLite's and PostgreSQL's CHECK violation
            with dbmod.transaction(conn):
                conn.execute(insert, (person_id, kind, slot, image, source))
    assert _stored(conn, person_id) == []


# --- the cardholder API, over the real server on each store ------------------------------------------------

@pytest.fixture(scope="module")
def holders(live_server):
    return Holder(live_server), Holder(live_server)


def _upload(holder, kind, data, content_type="image/jpeg"):
    return holder.http.post("/api/v1/photos/%s" % kind, content=data, headers={"Content-Type": content_type})


def test_the_holder_takes_a_photo_and_sees_only_their_own(live_server, holders):
    a, b = holders
    listed = a.http.get("/api/v1/photos")
    assert listed.status_code == 200
    assert listed.json() == {"photos": [{"kind": kind, "taken": False, "checked_ms": None, "source": None,
                                         "width": None, "height": None} for kind in photos.KINDS]}
    _error(a.http.get("/api/v1/photos/face"), 404, "photo_missing")

    answer = _upload(a, "face", exif_jpeg(ASTRONAUT))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["ok"], body["kind"], body["width"], body["height"]) == (True, "face", 512, 512)
    assert set(body["face"]) == {"x", "y", "w", "h"} and 85 <= body["face"]["w"] <= 105
    answer = _upload(a, "id_photo", png(head_and_shoulders()), "image/png")
    assert answer.status_code == 200, answer.text

    listed = a.http.get("/api/v1/photos").json()["photos"]
    assert [(row["kind"], row["taken"], row["source"], row["width"]) for row in listed] == [
        ("face", True, "app", 512), ("id_photo", True, "app", 483)]
    image = a.http.get("/api/v1/photos/face")
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    assert "no-store" in image.headers["Cache-Control"] and image.headers["X-Content-Type-Options"] == "nosniff"
    assert b"PhoneMaker" not in image.content and Image.open(io.BytesIO(image.content)).size == (512, 512)

    # the other holder: none of A's photos, whatever is asked
    assert [row["taken"] for row in b.http.get("/api/v1/photos").json()["photos"]] == [False, False]
    for kind in photos.KINDS:
        _error(b.http.get("/api/v1/photos/%s" % kind), 404, "photo_missing")
    for address in ("/api/v1/photos/face?person_id=%d" % a.person_id, "/api/v1/photos/%d/face" % a.person_id,
                    "/api/v1/persons/%d/photos/face" % a.person_id):
        answer = b.http.get(address)
        assert answer.status_code == 404 and image.content not in answer.content
    # without a token, or with a made-up one
    anonymous = httpx.Client(base_url=live_server.url, timeout=60)
    try:
        _error(anonymous.get("/api/v1/photos/face"), 401, "bad_token")
        _error(anonymous.post("/api/v1/photos/face", content=jpeg(ASTRONAUT), headers={"Content-Type": "image/jpeg"}),
               401, "bad_token")
        _error(anonymous.get("/api/v1/photos", headers={"Authorization": "Bearer " + "x" * 40}), 401, "bad_token")
    finally:
        anonymous.close()


def test_refused_uploads_answer_why_and_change_nothing(live_server, holders, snapshot):
    a, _ = holders
    assert a.http.get("/api/v1/photos").status_code == 200       # the token's last use is fresh: no write below
    conn = live_server.connect()
    try:
        before = snapshot(conn)
        for kind, data, content_type, status, code, words in [
            ("face", jpeg(scaled(skimage.data.coffee(), 720, 480)), "image/jpeg", 422, "photo_no_face", "未检测到人脸"),
            ("face", jpeg(np.hstack([ASTRONAUT, ASTRONAUT])), "image/jpeg", 422, "photo_many_faces", "多张人脸"),
            ("face", jpeg(blurred(ASTRONAUT, 2)), "image/jpeg", 422, "photo_blurry", "模糊"),
            ("face", jpeg(exposed(ASTRONAUT, 0.3)), "image/jpeg", 422, "photo_too_dark", "太暗"),
            ("face", jpeg(exposed(ASTRONAUT, 2)), "image/jpeg", 422, "photo_too_bright", "曝光过度"),
            ("id_photo", jpeg(backlit()), "image/jpeg", 422, "photo_backlit", "逆光"),
            ("id_photo", jpeg(ASTRONAUT), "image/jpeg", 422, "photo_face_too_small", "人脸太小"),
            ("face", jpeg(scaled(ASTRONAUT, 400, 400)), "image/jpeg", 422, "photo_too_small", "480"),
            ("face", png_claiming(100000, 100000), "image/png", 422, "photo_too_many_pixels", "4096"),
            ("face", bytes(range(256)) * 8, "image/jpeg", 422, "photo_not_image", "不是图片"),
            ("face", gif(ASTRONAUT), "image/png", 422, "photo_format", "JPEG"),
            ("face", jpeg(ASTRONAUT)[:40000], "image/jpeg", 422, "photo_corrupt", "损坏"),
            ("face", b"", "image/jpeg", 422, "photo_not_image", "不是图片"),
            ("face", jpeg(ASTRONAUT) + bytes(photos.MAX_PHOTO_BYTES), "image/jpeg", 413, "photo_too_large", "过大"),
            ("face", jpeg(ASTRONAUT), "application/octet-stream", 415, "photo_content_type", "image/jpeg"),
            ("face", jpeg(ASTRONAUT), "text/plain", 415, "photo_content_type", "image/jpeg"),
            ("passport", jpeg(ASTRONAUT), "image/jpeg", 404, "photo_kind_unknown", "没有这种照片"),
        ]:
            body = _error(_upload(a, kind, data, content_type), status, code)
            assert words in body["message_zh"], body
        # a body without a length (chunked) over the bound is cut off at the bound
        chunks = (bytes(64 * 1024) for _ in range(24))
        answer = a.http.post("/api/v1/photos/face", content=chunks, headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 413 and answer.json()["error"] in ("photo_too_large", "body_too_large")
        assert snapshot(conn) == before
    finally:
        conn.close()


def test_the_api_document_describes_the_photo_routes():
    from sync_server import openapi
    paths = openapi.document()["paths"]
    upload = paths["/photos/{kind}"]["post"]
    assert set(upload["requestBody"]["content"]) == {"image/jpeg", "image/png"}
    assert upload["requestBody"]["content"]["image/jpeg"]["schema"] == {"type": "string", "format": "binary"}
    assert {"200", "401", "404", "413", "415", "422"} == set(upload["responses"])
    assert set(paths["/photos/{kind}"]["get"]["responses"]["200"]["content"]) == {"image/jpeg"}
    assert "/photos" in paths


# --- the service hall (Flask's test client, on each store) -----------------------------------------------

PASSWORD = "correct horse battery"
ID_NUMBER = "110101199003071234"
NUMBER = "S20190001"


@pytest.fixture
def hall(tmp_path, store_environment):
    data_dir = str(tmp_path / "data")
    init_data_dir(data_dir, store_environment)
    app = create_app({"DATA_DIR": data_dir, "TESTING": True})
    conn = dbmod.connect(dbmod.store_location(data_dir))
    person_id, account_id = registry.add_person(conn, "张三", 2, staff_number=NUMBER, id_number=ID_NUMBER)
    registry.issue_card_record(conn, account_id, b"\x01\x02\x03\x04")
    registry.recharge(conn, account_id, 6955)
    other_id, _ = registry.add_person(conn, "李四", 2, staff_number="S20190002")
    auth.add_staff_user(conn, "clerk", "王老师", ["hall"], PASSWORD)
    auth.add_staff_user(conn, "auditor", "财务", ["finance"], PASSWORD)
    yield {"app": app, "conn": conn, "person_id": person_id, "account_id": account_id, "other_id": other_id}
    conn.close()


def _token(page):
    text = page.get_data(as_text=True)
    marker = 'name="csrf_token" value="'
    start = text.index(marker) + len(marker)
    return text[start:text.index('"', start)]


def _signed_in(app, username="clerk"):
    client = app.test_client()
    token = _token(client.get("/hall/sign-in"))
    assert client.post("/hall/sign-in", data={"username": username, "password": PASSWORD,
                                              "csrf_token": token}).status_code == 302
    return client


def _hall_upload(client, person_id, kind, data, filename="photo.jpg", token=None):
    token = token or _token(client.get("/hall/person/%d" % person_id))
    return client.post("/hall/person/%d/photo/%s" % (person_id, kind), content_type="multipart/form-data",
                       data={"csrf_token": token, "photo": (io.BytesIO(data), filename)})


def test_the_person_page_shows_the_photos_and_takes_them_through_the_same_checks(hall):
    client, person_id = _signed_in(hall["app"]), hall["person_id"]
    page = client.get("/hall/person/%d" % person_id).get_data(as_text=True)
    assert page.count("未采集") == 2 and 'id="photo-face-form"' in page and "/photo/face?v=" not in page
    assert client.get("/hall/person/%d/photo/face" % person_id).status_code == 404

    answer = _hall_upload(client, person_id, "face", exif_jpeg(ASTRONAUT))
    assert answer.status_code == 302 and answer.location.endswith("/hall/person/%d#photos" % person_id)
    page = client.get("/hall/person/%d" % person_id).get_data(as_text=True)
    assert "人脸照片已采集" in page and page.count("未采集") == 1 and "大厅采集（clerk）" in page
    assert '<img id="photo-face-image" src="/hall/person/%d/photo/face?v=' % person_id in page
    image = client.get("/hall/person/%d/photo/face" % person_id)
    assert image.status_code == 200 and image.mimetype == "image/jpeg"
    assert image.headers["Cache-Control"] == "no-store" and b"PhoneMaker" not in image.data
    row = hall["conn"].execute("SELECT username, action, person_id, detail FROM staff_actions").fetchone()
    assert row[:3] == ("clerk", "photo", person_id) and '"kind": "face"' in row[3]
    assert "照片采集" in page                                     # the service log names it
    stored = photos.photo_summary(hall["conn"], person_id)["face"]
    assert (stored["source"], stored["operator"]) == ("hall", "clerk")

    # a refused photo: the reason on the page, nothing stored, nothing logged
    before = database_snapshot(hall["conn"])
    token = _token(client.get("/hall/person/%d" % person_id))
    for data, words in ((jpeg(scaled(skimage.data.coffee(), 720, 480)), "未检测到人脸"),
                        (jpeg(np.hstack([ASTRONAUT, ASTRONAUT])), "多张人脸"), (gif(ASTRONAUT), "JPEG 或 PNG"),
                        (b"", "不是图片"), (jpeg(ASTRONAUT) + bytes(photos.MAX_PHOTO_BYTES - 40000), "过大")):
        answer = _hall_upload(client, person_id, "id_photo", data, token=token)
        assert answer.status_code == 302
        page = client.get("/hall/person/%d" % person_id).get_data(as_text=True)
        assert "证件照未通过检查" in page and words in page, words
    assert database_snapshot(hall["conn"]) == before
    assert client.post("/hall/person/%d/photo/passport" % person_id, content_type="multipart/form-data",
                       data={"csrf_token": token, "photo": (io.BytesIO(jpeg(ASTRONAUT)), "a.jpg")}).status_code == 404


def test_photos_are_for_the_hall_role_only(hall):
    person_id = hall["person_id"]
    photos.store_photo(hall["conn"], person_id, "face", jpeg(ASTRONAUT), "app")
    address = "/hall/person/%d/photo/face" % person_id
    anonymous = hall["app"].test_client()
    answer = anonymous.get(address)
    assert answer.status_code == 302 and "/hall/sign-in" in answer.location
    assert _signed_in(hall["app"], "auditor").get(address).status_code == 403
    cardholder = hall["app"].test_client()
    token = _token(cardholder.get("/portal/sign-in"))
    assert cardholder.post("/portal/sign-in", data={"staff_number": NUMBER, "pin": pin_rules.initial_pin(
        ID_NUMBER, NUMBER), "csrf_token": token}).status_code == 302
    assert cardholder.get("/portal/").status_code == 200                       # signed in, as the holder
    answer = cardholder.get(address)
    assert answer.status_code == 302 and answer.data[:3] != photos.JPEG_MAGIC
    # an upload without the form token is refused and changes nothing
    before = database_snapshot(hall["conn"])
    clerk = _signed_in(hall["app"])
    assert clerk.post("/hall/person/%d/photo/id_photo" % person_id, content_type="multipart/form-data",
                      data={"photo": (io.BytesIO(jpeg(head_and_shoulders())), "a.jpg")}).status_code == 400
    assert database_snapshot(hall["conn"]) == before
    # another person's photo is theirs alone: none here
    assert clerk.get("/hall/person/%d/photo/face" % hall["other_id"]).status_code == 404
    assert clerk.get("/hall/person/%d/photo/face" % (hall["other_id"] + 99)).status_code == 404


def test_the_reissue_confirmation_shows_the_photo_before_the_card_is_written(hall):
    client, person_id = _signed_in(hall["app"]), hall["person_id"]
    page = client.get("/hall/person/%d/reissue?fee_source=cash" % person_id).get_data(as_text=True)
    assert "此人尚未采集照片" in page and 'id="photo-face-missing"' in page and 'id="photo-id_photo-missing"' in page
    photos.store_photo(hall["conn"], person_id, "id_photo", jpeg(head_and_shoulders()), "hall", operator="clerk")
    page = client.get("/hall/person/%d/reissue?fee_source=cash" % person_id).get_data(as_text=True)
    assert '<img id="photo-id_photo-image"' in page and "此人尚未采集照片" not in page and 'id="photo-face-form"' not in page
    assert "**************1234" in page and "10.00" in page and "现金支付" in page
    assert hall["conn"].execute("SELECT count(*) FROM cards").fetchone()[0] == 1      # nothing done yet
    for query in ("fee_source=gift", "station=" + "x" * 41):
        answer = client.get("/hall/person/%d/reissue?%s" % (person_id, query))
        assert answer.status_code == 302 and answer.location.endswith("/hall/person/%d" % person_id)
    answer = client.post("/hall/person/%d/reissue" % person_id,
                         data={"csrf_token": _token(client.get("/hall/person/%d" % person_id)), "fee_source": "cash"})
    assert answer.status_code == 302 and "/hall/card-job/" in answer.location     # the issuing station writes it
    assert "等待发卡机" in client.get(answer.location).get_data(as_text=True)
    assert hall["conn"].execute("SELECT count(*) FROM cards").fetchone()[0] == 1


# --- the hall in headless Chromium, against the real server --------------------------------------------

CLERK_PASSWORD = "hall-desk-password"


@pytest.fixture(scope="module")
def browser_site(tmp_path_factory, module_database):
    with running_server(tmp_path_factory.mktemp("photos-web"), database=module_database) as server:
        conn = server.connect()
        person_id, account_id = registry.add_person(conn, "赵采集", 2, staff_number="S20240077",
                                                    id_number="11010120000101007X")
        registry.issue_card_record(conn, account_id, b"\xc1\x02\x03\x04")
        registry.recharge(conn, account_id, 5000)
        auth.add_staff_user(conn, "clerk", "王老师", ["hall"], CLERK_PASSWORD)
        conn.close()
        yield {"server": server, "person_id": person_id}


@pytest.mark.stores("sqlite")   # the browser's side; the checks run on both stores above
def test_a_clerk_takes_a_photo_and_checks_it_at_the_reissue(browser_site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, person_id = browser_site["server"].url, browser_site["person_id"]
    photo_file = tmp_path / "desk-camera.jpg"
    photo_file.write_bytes(exif_jpeg(head_and_shoulders()))
    with chromium(tmp_path) as driver:
        driver.get(url + "/hall/sign-in")
        fill(driver, {"username": "clerk", "password": CLERK_PASSWORD})
        click(driver, "sign-in")
        driver.get(url + "/hall/person/%d" % person_id)
        assert by_id(driver, "photo-face-missing").text == "未采集"
        by_id(driver, "photo-id_photo-file").send_keys(str(photo_file))
        click(driver, "photo-id_photo-upload")
        assert "证件照已采集" in driver.page_source

        def shown(element_id):      # the <img> loaded and drew a picture
            return driver.execute_script("const i = document.getElementById(arguments[0]); "
                                         "return i.complete ? i.naturalWidth : 0", element_id)
        assert shown("photo-id_photo-image") == 483
        driver.save_screenshot(str(tmp_path / "hall_person_photos.png"))
        fill(driver, {"station": "desk-1"})
        click(driver, "reissue")
        assert "核对身份" in driver.page_source and shown("photo-id_photo-image") == 483
        assert by_id(driver, "confirm-station").text == "desk-1"
        driver.save_screenshot(str(tmp_path / "hall_reissue_confirm.png"))
        by_id(driver, "identity-checked").click()
        click(driver, "reissue-confirm")
        assert by_id(driver, "job-status").text == "等待发卡机"
        job_id = int(driver.current_url.rsplit("/", 1)[1])
        conn = browser_site["server"].connect()
        try:                  # the station writes the card; the page follows by itself
            card_jobs.claim(conn, job_id, "desk-1", b"\xa1\xb2\xc3\xd5")
            card_jobs.complete(conn, job_id, "desk-1", cli_common.job_receipt)
        finally:
            conn.close()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "job-receipt"))
        assert by_id(driver, "job-status").text == "已完成"
        click(driver, "job-receipt")
        assert "补办卡片" in by_id(driver, "receipt-action").text
        # the image address on its own, after signing out: not shown
        driver.delete_all_cookies()
        driver.get(url + "/hall/person/%d/photo/id_photo" % person_id)
        assert "/hall/sign-in" in driver.current_url
    conn = browser_site["server"].connect()
    try:
        assert conn.execute("SELECT action FROM staff_actions ORDER BY id").fetchall() == \
            [("photo",), ("card_job",), ("reissue",)]
        assert photos.photo_summary(conn, person_id)["id_photo"]["source"] == "hall"
    finally:
        conn.close()
