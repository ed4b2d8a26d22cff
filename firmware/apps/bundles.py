"""Firmware bundles: what a terminal installs, and the checks it makes before it trusts one.

A bundle is a zip file made by `tools/release.py build`:

    manifest.json     {"format": 1, "kind": "pos", "version": "1.3.0", "created_ms": ...,
                       "files": {"firmware/apps/pos_terminal.py": {"sha256": "...", "bytes": 1234}, ...}}
    manifest.sig      Ed25519 signature of manifest.json's exact bytes, by the site's release key
    files/<path>      each file the manifest lists, and nothing else

The release key's private half never touches the server or a terminal: it is kept offline by whoever
signs releases. A terminal holds only public keys (its provisioning file's `release_keys`, several
so a key can be replaced) and refuses a bundle unless:

  - the signature verifies under one of them (cryptography's Ed25519), over the manifest as stored;
  - the kind is this terminal's (a water dispenser never installs a POS's bundle);
  - the version is newer than the one installed (no downgrade to a version with a known flaw; a
    rollback goes to the copy kept on the device, not to a bundle from outside);
  - every member is listed with its size and SHA-256, and matches; nothing unlisted, nothing twice;
  - every path is a plain relative path (no "..", no absolute path, no backslash, no link), and the
    bundle, each file and the count of files are within bounds (a zip bomb is refused by its sizes
    before it is inflated).

`verify_bundle` reads and checks without writing anything; `unpack_bundle` writes the checked files
into an empty directory (the inactive slot of an A/B install), each written and hashed again.
"""
import hashlib
import json
import os
import re
import stat
import zipfile

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = 1
KINDS = ("pos", "dispenser", "activation")
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FILES_PREFIX = "files/"
MAX_BUNDLE_BYTES = 64 << 20
MAX_FILE_BYTES = 16 << 20
MAX_TOTAL_BYTES = 128 << 20
MAX_FILES = 4000
MAX_MANIFEST_BYTES = 1 << 20
_VERSION = re.compile(r"^(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


class BundleRefused(Exception):
    """A bundle that must not be installed: Chinese, then English, and the reason's code."""

    def __init__(self, code, zh, en):
        super().__init__("%s / %s" % (zh, en))
        self.code = code


def parse_version(text):
    """'1.3.0' -> (1, 3, 0); anything else refused (no leading zeros, no suffixes)."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        raise BundleRefused("bad_version", "版本号无效：%r" % (text,), "bad version: %r" % (text,))
    return tuple(int(part) for part in match.groups())


def check_path(path):
    """A bundle path: relative, forward slashes, plain names only."""
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or len(path) > 240 or any(part in ("", ".", "..") or not _PATH_PART.match(part) for part in parts):
        raise BundleRefused("bad_path", "固件包中的路径不安全：%r" % (path,), "unsafe path in the bundle: %r" % (path,))
    return path


def public_keys(hex_keys):
    """Ed25519 public keys from the provisioning file's hex strings (a bad one is an error there)."""
    return [Ed25519PublicKey.from_public_bytes(bytes.fromhex(text)) for text in hex_keys]


def verify_bundle(path, kind, installed_version, keys):
    """The bundle's manifest (a dict) when it may be installed on a `kind` terminal now running
    `installed_version`; otherwise BundleRefused saying why. Writes nothing."""
    assert kind in KINDS, kind
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise BundleRefused("missing", "找不到固件包 %s" % path, "no bundle at %s: %s" % (path, error.strerror))
    if size > MAX_BUNDLE_BYTES:
        raise BundleRefused("too_large", "固件包过大（%d 字节）" % size, "the bundle is too large (%d bytes)" % size)
    try:
        with zipfile.ZipFile(path) as archive:
            return _verify_archive(archive, kind, installed_version, keys)
    except zipfile.BadZipFile as error:
        raise BundleRefused("not_a_bundle", "不是固件包：%s" % error, "not a bundle: %s" % error)


def _verify_archive(archive, kind, installed_version, keys):
    members = archive.infolist()
    names = [member.filename for member in members]
    if len(names) != len(set(names)):
        raise BundleRefused("duplicate", "固件包中有重复的文件", "the bundle holds a file twice")
    by_name = {member.filename: member for member in members}
    for name in (MANIFEST, SIGNATURE):
        if name not in by_name or by_name[name].file_size > MAX_MANIFEST_BYTES:
            raise BundleRefused("not_a_bundle", "固件包缺少 %s" % name, "the bundle lacks %s" % name)
    manifest_bytes = archive.read(MANIFEST)
    signature = archive.read(SIGNATURE)
    if not any(_signed_by(key, signature, manifest_bytes) for key in keys):
        raise BundleRefused("bad_signature", "固件包签名无效（不是本校发布的版本，或已被改动）",
                            "the bundle's signature is not valid (not a release of this site, or altered)")
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except ValueError:
        raise BundleRefused("bad_manifest", "固件包清单无法读取", "the bundle's manifest cannot be read")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleRefused("bad_manifest", "固件包清单格式不对", "the bundle's manifest has the wrong format")
    if manifest.get("kind") != kind:
        raise BundleRefused("wrong_kind", "固件包是给%s的，本机是%s" % (manifest.get("kind"), kind),
                            "the bundle is for %s terminals; this one is a %s" % (manifest.get("kind"), kind))
    version = parse_version(manifest.get("version"))
    if installed_version is not None and version <= parse_version(installed_version):
        raise BundleRefused("not_newer", "固件版本 %s 不比已安装的 %s 新" % (manifest["version"], installed_version),
                            "version %s is not newer than the installed %s" % (manifest["version"], installed_version))
    listed = manifest["files"]
    if len(listed) > MAX_FILES:
        raise BundleRefused("too_large", "固件包文件过多", "too many files in the bundle")
    total = 0
    for path, entry in listed.items():
        check_path(path)
        member = by_name.get(FILES_PREFIX + path)
        if member is None or not isinstance(entry, dict):
            raise BundleRefused("incomplete", "固件包缺少文件 %s" % path, "the bundle lacks %s" % path)
        if stat.S_ISLNK(member.external_attr >> 16) or member.is_dir():
            raise BundleRefused("bad_path", "固件包中有链接或目录项 %s" % path, "a link or directory entry: %s" % path)
        if member.file_size != entry.get("bytes") or member.file_size > MAX_FILE_BYTES:
            raise BundleRefused("altered", "文件 %s 的大小与清单不符" % path, "%s does not have its listed size" % path)
        total += member.file_size
        if total > MAX_TOTAL_BYTES:
            raise BundleRefused("too_large", "固件包解压后过大", "the bundle is too large once unpacked")
    unlisted = [name for name in names if name not in (MANIFEST, SIGNATURE)
                and not (name.startswith(FILES_PREFIX) and name[len(FILES_PREFIX):] in listed)]
    if unlisted:
        raise BundleRefused("unlisted", "固件包中有清单外的文件 %s" % unlisted[0], "a file not in the manifest: %s"
                            % unlisted[0])
    for path, entry in listed.items():
        if _sha256_member(archive, FILES_PREFIX + path) != entry.get("sha256"):
            raise BundleRefused("altered", "文件 %s 与清单不符（已被改动）" % path, "%s does not match the manifest "
                                "(altered)" % path)
    return manifest


def _signed_by(key, signature, message):
    try:
        key.verify(signature, message)
        return True
    except InvalidSignature:
        return False


def _sha256_member(archive, name):
    digest = hashlib.sha256()
    with archive.open(name) as stream:
        for chunk in iter(lambda: stream.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpack_bundle(path, kind, installed_version, keys, destination):
    """Verify the bundle, then write its files under `destination` (empty or absent), each hashed
    again as written and flushed; returns the manifest."""
    manifest = verify_bundle(path, kind, installed_version, keys)
    if os.path.isdir(destination) and os.listdir(destination):
        raise BundleRefused("slot_busy", "安装位置 %s 不是空的" % destination, "%s is not empty" % destination)
    os.makedirs(destination, mode=0o755, exist_ok=True)
    with zipfile.ZipFile(path) as archive:
        for relative, entry in sorted(manifest["files"].items()):
            target = os.path.join(destination, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            digest = hashlib.sha256()
            with archive.open(FILES_PREFIX + relative) as source, open(target, "xb") as out:
                for chunk in iter(lambda: source.read(1 << 16), b""):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != entry["sha256"]:
                raise BundleRefused("altered", "写入 %s 时内容不符" % relative, "%s changed while written" % relative)
    return manifest
