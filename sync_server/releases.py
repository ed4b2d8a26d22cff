"""Firmware releases on the server, and which terminals are offered which.

    add_release_key(conn, hex)                  trust bundles signed by this release key (public half)
    add_release(conn, data_dir, bundle)         check a bundle as a terminal would and keep it
    add_rollout(conn, release_id, terminal_id=None, merchant_id=None)
                                                offer it to one terminal, a merchant's, or all of its kind
    offer_for(conn, terminal_id, category, firmware)
                                                the sync answer's update command for this terminal, or None
    release_file(conn, data_dir, terminal_id, category, release_id)
                                                the bundle's path, when that terminal is offered it

The server never signs: bundles are signed offline (tools/release.py) and a terminal checks the
signature itself against the release keys in its provisioning file. The server checks too, so a
wrong file is refused at the desk rather than by every terminal. A terminal is offered a release
newer than the firmware it reported at its last sync (its health's "ykt-pos/1.2.0"), the newest
of those a rollout names it in; stages are rollouts: one terminal first, then a merchant, then all.
"""
import hashlib
import os
import re
import shutil
import zipfile

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware.core import bundle_format, wallets
from sync_server import db as dbmod, mistakes

RELEASES_DIR = "releases"
KIND_OF_CATEGORY = {wallets.CATEGORY_CANTEEN: "pos", wallets.CATEGORY_WATER: "dispenser",
                    wallets.CATEGORY_ACTIVATION: "activation"}
_KEY = re.compile(r"^[0-9a-f]{64}$")
_FIRMWARE = re.compile(r"^ykt-([a-z]+)/(.+)$")


def add_release_key(conn, public_hex):
    text = (public_hex or "").strip().lower()
    if not _KEY.match(text):
        raise mistakes.MalformedInput("发布公钥应为 64 位十六进制", "a release key is 64 hex digits")
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    with dbmod.transaction(conn):
        if conn.execute("SELECT 1 FROM release_keys WHERE public_hex = ?", (text,)).fetchone() is None:
            conn.execute("INSERT INTO release_keys (public_hex, added_ms) VALUES (?, ?)", (text, dbmod.now_ms()))
    return text


def release_keys(conn):
    return [row[0] for row in conn.execute("SELECT public_hex FROM release_keys ORDER BY added_ms, public_hex")]


def add_release(conn, data_dir, bundle_path):
    """Verify the bundle under the site's release keys and keep a copy; returns the release id."""
    if not os.path.isfile(bundle_path):
        raise mistakes.FileMistake("找不到固件包 %s" % bundle_path, "no bundle at %s" % bundle_path)
    if not zipfile.is_zipfile(bundle_path):
        raise mistakes.MalformedInput("不是固件包：%s" % bundle_path, "not a firmware bundle: %s" % bundle_path)
    keys = release_keys(conn)
    if not keys:
        raise mistakes.Mistake("尚未登记发布公钥：先运行 ykt fleet release-key-add",
                               "no release key registered yet: run ykt fleet release-key-add first")
    try:
        manifest = _checked_manifest(bundle_path, keys)
    except zipfile.BadZipFile as error:
        raise mistakes.MalformedInput("不是固件包：%s" % error, "not a firmware bundle: %s" % error)
    except bundle_format.BundleRefused as error:
        zh, _, en = str(error).partition(" / ")
        raise mistakes.MalformedInput(zh, en)
    kind = manifest["kind"]
    directory = os.path.join(data_dir, RELEASES_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = "ykt-%s-%s.zip" % (kind, manifest["version"])
    target = os.path.join(directory, name)
    with dbmod.transaction(conn):
        if conn.execute("SELECT 1 FROM firmware_releases WHERE kind = ? AND version = ?",
                        (kind, manifest["version"])).fetchone() is not None:
            raise mistakes.Mistake("%s %s 已登记" % (kind, manifest["version"]),
                                   "%s %s is registered already" % (kind, manifest["version"]))
        shutil.copyfile(bundle_path, target + ".partial")
        os.replace(target + ".partial", target)
        with open(target, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        return conn.execute("INSERT INTO firmware_releases (kind, version, sha256, bytes, file_name, added_ms) "
                            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                            (kind, manifest["version"], digest, os.path.getsize(target), name,
                             dbmod.now_ms())).fetchone()[0]


def _checked_manifest(bundle_path, keys):
    """The manifest of a bundle signed by one of the site's release keys, of a known kind, its members
    as listed (the terminal also hashes every file before it installs one)."""
    public = [Ed25519PublicKey.from_public_bytes(bytes.fromhex(key)) for key in keys]

    def is_signed(signature, message):
        for key in public:
            try:
                key.verify(signature, message)
                return True
            except InvalidSignature:
                continue
        return False
    with zipfile.ZipFile(bundle_path) as archive:
        infos = archive.infolist()
        bundle_format.check_names([(info.filename, info.file_size) for info in infos])
        manifest = bundle_format.signed_manifest(archive.read(bundle_format.MANIFEST),
                                                 archive.read(bundle_format.SIGNATURE), is_signed)
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        if kind not in bundle_format.KINDS:
            raise bundle_format.BundleRefused("wrong_kind", "固件包的终端类型未知：%r" % (kind,),
                                              "unknown terminal kind %r" % (kind,))
        bundle_format.check_manifest(manifest, kind, None)
        bundle_format.check_members(manifest["files"], bundle_format.members_of(infos))
    return manifest


def add_rollout(conn, release_id, terminal_id=None, merchant_id=None):
    assert terminal_id is None or merchant_id is None
    with dbmod.transaction(conn):
        if conn.execute("SELECT 1 FROM firmware_releases WHERE id = ?", (release_id,)).fetchone() is None:
            raise mistakes.UnknownRecord("没有固件版本 %d" % release_id, "no release %d" % release_id)
        if terminal_id is not None and conn.execute("SELECT 1 FROM terminals WHERE id = ?",
                                                    (terminal_id,)).fetchone() is None:
            raise mistakes.UnknownRecord("没有终端 %d" % terminal_id, "no terminal %d" % terminal_id)
        if merchant_id is not None and conn.execute("SELECT 1 FROM merchants WHERE id = ?",
                                                    (merchant_id,)).fetchone() is None:
            raise mistakes.UnknownRecord("没有商户 %d" % merchant_id, "no merchant %d" % merchant_id)
        return conn.execute("INSERT INTO firmware_rollouts (release_id, terminal_id, merchant_id, created_ms) "
                            "VALUES (?, ?, ?, ?) RETURNING id",
                            (release_id, terminal_id, merchant_id, dbmod.now_ms())).fetchone()[0]


def _offered(conn, terminal_id, category):
    """[(release id, version, sha256, bytes)] of the releases some rollout names this terminal in."""
    kind = KIND_OF_CATEGORY.get(category)
    if kind is None:
        return []
    return conn.execute(
        "SELECT DISTINCT r.id, r.version, r.sha256, r.bytes FROM firmware_rollouts o "
        "JOIN firmware_releases r ON r.id = o.release_id "
        "WHERE r.kind = ? AND (o.terminal_id = ? OR o.merchant_id = (SELECT merchant_id FROM terminals WHERE id = ?) "
        "OR (o.terminal_id IS NULL AND o.merchant_id IS NULL))", (kind, terminal_id, terminal_id)).fetchall()


def offer_for(conn, terminal_id, category, firmware):
    """The update command for a terminal running `firmware` ("ykt-pos/1.2.0"), or None."""
    match = _FIRMWARE.match(firmware or "")
    try:
        running = bundle_format.parse_version(match.group(2)) if match else None
    except bundle_format.BundleRefused:
        running = None
    if running is None:
        return None                       # a build not from a bundle (development): never updated
    newer = [row for row in _offered(conn, terminal_id, category) if bundle_format.parse_version(row[1]) > running]
    if not newer:
        return None
    release_id, version, sha256, size = max(newer, key=lambda row: bundle_format.parse_version(row[1]))
    return {"op": "update", "release_id": release_id, "version": version, "sha256": sha256, "bytes": size}


def release_file(conn, data_dir, terminal_id, category, release_id):
    """The bundle's path when this terminal is offered release_id; None otherwise."""
    for row in _offered(conn, terminal_id, category):
        if row[0] == release_id:
            name = conn.execute("SELECT file_name FROM firmware_releases WHERE id = ?", (release_id,)).fetchone()[0]
            return os.path.join(data_dir, RELEASES_DIR, name)
    return None


def list_releases(conn):
    return [dict(zip(("id", "kind", "version", "sha256", "bytes", "added_ms", "rollouts"), row)) for row in
            conn.execute("SELECT r.id, r.kind, r.version, r.sha256, r.bytes, r.added_ms, "
                         "(SELECT count(*) FROM firmware_rollouts o WHERE o.release_id = r.id) "
                         "FROM firmware_releases r ORDER BY r.kind, r.id")]
