"""The firmware bundle's format and the rules every reader of one applies (sans-IO).

The terminal (firmware/apps/bundles.py, which also checks the Ed25519 signature and every file's
hash) and the server registering a release (sync_server/releases.py) both read bundles; the rules
they share live here, on plain values: the version's form and order, the manifest's shape, kind and
version, each path, each member's size and kind, and nothing unlisted.

    manifest.json     {"format": 1, "kind": "pos", "version": "1.3.0", "created_ms": ...,
                       "files": {"firmware/apps/pos_terminal.py": {"sha256": "...", "bytes": 1234}, ...}}
    manifest.sig      Ed25519 signature of manifest.json's exact bytes, by the site's release key
    files/<path>      each file the manifest lists, and nothing else
"""
import json

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
MAX_PATH_CHARS = 240
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


class BundleRefused(Exception):
    """A bundle that must not be installed: Chinese, then English, and the reason's code."""

    def __init__(self, code, zh, en):
        Exception.__init__(self, "%s / %s" % (zh, en))
        self.code = code
        self.zh, self.en = zh, en


def parse_version(text):
    """'1.3.0' -> (1, 3, 0); anything else refused (no leading zeros, no suffixes, 4 digits at most)."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3 or not all(_version_part(part) for part in parts):
        raise BundleRefused("bad_version", "版本号无效：%r" % (text,), "bad version: %r" % (text,))
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def _version_part(part):
    return 0 < len(part) <= 4 and all("0" <= char <= "9" for char in part) and (part == "0" or part[0] != "0")


def check_path(path):
    """A bundle path: relative, forward slashes, plain names only."""
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or len(path) > MAX_PATH_CHARS or not all(_plain_name(part) for part in parts):
        raise BundleRefused("bad_path", "固件包中的路径不安全：%r" % (path,), "unsafe path in the bundle: %r" % (path,))
    return path


def _plain_name(part):
    return part not in ("", ".", "..") and all(char in _PATH_CHARS for char in part)


def check_manifest(manifest, kind, installed_version):
    """The manifest's shape, its kind (this terminal's) and its version (newer than installed_version,
    None: any); returns the version as a tuple."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleRefused("bad_manifest", "固件包清单格式不对", "the bundle's manifest has the wrong format")
    if manifest.get("kind") != kind:
        raise BundleRefused("wrong_kind", "固件包是给%s的，本机是%s" % (manifest.get("kind"), kind),
                            "the bundle is for %s terminals; this one is a %s" % (manifest.get("kind"), kind))
    version = parse_version(manifest.get("version"))
    if installed_version is not None and version <= parse_version(installed_version):
        raise BundleRefused("not_newer", "固件版本 %s 不比已安装的 %s 新" % (manifest["version"], installed_version),
                            "version %s is not newer than the installed %s" % (manifest["version"], installed_version))
    if len(manifest["files"]) > MAX_FILES:
        raise BundleRefused("too_large", "固件包文件过多", "too many files in the bundle")
    return version


_S_IFMT, _S_IFLNK = 0o170000, 0o120000      # stat.h's file type bits, as zip keeps them in external_attr


def members_of(infos):
    """{member name: (size, is a link or directory)} of zip entries (zipfile.ZipInfo, or anything with
    filename, file_size, external_attr and is_dir()), the manifest and its signature left out."""
    return {info.filename: (info.file_size, info.is_dir() or (info.external_attr >> 16) & _S_IFMT == _S_IFLNK)
            for info in infos if info.filename not in (MANIFEST, SIGNATURE)}


def check_members(listed, members):
    """`listed`: the manifest's files; `members`: {archive name: (size, is a link or directory)} of
    every member but the manifest and its signature. Each listed path must be a member of its size,
    a plain file, within bounds; no member may be unlisted."""
    total = 0
    for path in listed:
        entry = listed[path]
        check_path(path)
        member = members.get(FILES_PREFIX + path)
        if member is None or not isinstance(entry, dict):
            raise BundleRefused("incomplete", "固件包缺少文件 %s" % path, "the bundle lacks %s" % path)
        size, special = member
        if special:
            raise BundleRefused("bad_path", "固件包中有链接或目录项 %s" % path, "a link or directory entry: %s" % path)
        if size != entry.get("bytes") or size > MAX_FILE_BYTES:
            raise BundleRefused("altered", "文件 %s 的大小与清单不符" % path, "%s does not have its listed size" % path)
        total += size
        if total > MAX_TOTAL_BYTES:
            raise BundleRefused("too_large", "固件包解压后过大", "the bundle is too large once unpacked")
    for name in members:
        if not (name.startswith(FILES_PREFIX) and name[len(FILES_PREFIX):] in listed):
            raise BundleRefused("unlisted", "固件包中有清单外的文件 %s" % name, "a file not in the manifest: %s" % name)


def check_names(sizes):
    """`sizes`: [(member name, size)] of the whole archive: no name twice, the manifest and its
    signature present and small."""
    names = [name for name, _size in sizes]
    if len(names) != len(set(names)):
        raise BundleRefused("duplicate", "固件包中有重复的文件", "the bundle holds a file twice")
    for wanted in (MANIFEST, SIGNATURE):
        if not [size for name, size in sizes if name == wanted and size <= MAX_MANIFEST_BYTES]:
            raise BundleRefused("not_a_bundle", "固件包缺少 %s" % wanted, "the bundle lacks %s" % wanted)


def signed_manifest(manifest_bytes, signature, is_signed):
    """The manifest, once `is_signed(signature, manifest_bytes)` (one of the release keys verifies)."""
    if not is_signed(signature, manifest_bytes):
        raise BundleRefused("bad_signature", "固件包签名无效（不是本校发布的版本，或已被改动）",
                            "the bundle's signature is not valid (not a release of this site, or altered)")
    try:
        return json.loads(manifest_bytes.decode("utf-8"))
    except ValueError:
        raise BundleRefused("bad_manifest", "固件包清单无法读取", "the bundle's manifest cannot be read")
