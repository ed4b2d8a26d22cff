"""Firmware bundles: what a terminal installs, and the checks it makes before it trusts one.

A bundle is a zip file made by `tools/release.py build`, in the format of firmware/core/bundle_format.py
(whose rules the server applies too when a release is registered).

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
import os
import zipfile

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware.core.bundle_format import (  # noqa: F401 - the format's names, for the tools and tests
    FILES_PREFIX, FORMAT, KINDS, MANIFEST, MAX_BUNDLE_BYTES, MAX_FILE_BYTES, MAX_MANIFEST_BYTES, SIGNATURE,
    BundleRefused, check_manifest, check_members, check_names, check_path, members_of, parse_version,
    signed_manifest,
)


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
    manifest, members = read_signed_manifest(archive, keys)
    check_manifest(manifest, kind, installed_version)
    check_members(manifest["files"], members)
    check_files(archive, manifest)
    return manifest


def check_files(archive, manifest):
    """Every file the manifest lists is in the open bundle with its SHA-256; BundleRefused("altered")
    otherwise (KeyError for a listed file that is missing)."""
    for path, entry in manifest["files"].items():
        if _sha256_member(archive, FILES_PREFIX + path) != entry.get("sha256"):
            raise BundleRefused("altered", "文件 %s 与清单不符（已被改动）" % path, "%s does not match the manifest "
                                "(altered)" % path)


def read_signed_manifest(archive, keys):
    """(the manifest, {member name: (size, is a link or directory)} of the other members) of an open
    bundle whose manifest is signed by one of `keys`; BundleRefused otherwise."""
    infos = archive.infolist()
    check_names([(info.filename, info.file_size) for info in infos])
    manifest = signed_manifest(archive.read(MANIFEST), archive.read(SIGNATURE),
                               lambda signature, message: any(_signed_by(key, signature, message) for key in keys))
    return manifest, members_of(infos)


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
