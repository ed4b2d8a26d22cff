#!/usr/bin/env python3
"""Make and sign firmware bundles (firmware/apps/bundles.py) with the site's release key.

    python tools/release.py keygen --out /media/usb/ykt-release.key
        a new Ed25519 release key: the private key file (0600, never printed) and its public half on
        stdout, the hex that goes into the server's release_keys and so into each terminal's
        provisioning file. Keep the key offline; the server never holds it.
    python tools/release.py build --kind pos --version 1.3.0 --key /media/usb/ykt-release.key --out dist/
        a signed bundle dist/ykt-pos-1.3.0.zip of the project's packages as they are in this tree
    python tools/release.py show dist/ykt-pos-1.3.0.zip [--release-key HEX ...] [--installed 1.2.0]
        its manifest, and with public keys whether a terminal would take it (exit 0) or why not (2)

The packages are those a terminal runs (`ykt`, which assembles every part's commands, the firmware,
the reader drivers, the server's shared modules and the simulators behind sim: readers); caches and
compiled files are left out. Members are stored in sorted order with a fixed time stamp, so the same
tree gives the same bundle bytes apart from the signature's manifest time.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from firmware.apps import bundles  # noqa: E402

PACKAGES = ("ykt", "firmware", "reader_drivers", "sync_server", "simulators")
SKIPPED_DIRS = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def keygen(out):
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(raw)
    return public_hex(key)


def public_hex(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_key(path):
    with open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) != 32:
        raise SystemExit("发布密钥文件无效（应为 32 字节）/ not a release key file (32 bytes expected): %s" % path)
    return Ed25519PrivateKey.from_private_bytes(raw)


def tree_files(root=ROOT):
    """{bundle path: file path} of the packages, sorted."""
    found = {}
    for package in PACKAGES:
        for directory, subdirectories, names in os.walk(os.path.join(root, package)):
            subdirectories[:] = sorted(name for name in subdirectories if name not in SKIPPED_DIRS)
            for name in sorted(names):
                if name.endswith(SKIPPED_SUFFIXES):
                    continue
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                if os.path.islink(path):
                    continue
                bundles.check_path(relative)
                found[relative] = path
    return dict(sorted(found.items()))


def build(kind, version, key, out_dir, files=None, created_ms=None):
    """Write the signed bundle into out_dir; returns its path."""
    bundles.parse_version(version)
    if kind not in bundles.KINDS:
        raise SystemExit("未知的终端类型 %r（%s）/ unknown kind %r" % (kind, "、".join(bundles.KINDS), kind))
    files = tree_files() if files is None else files
    listed = {}
    for relative, path in files.items():
        with open(path, "rb") as handle:
            data = handle.read()
        listed[relative] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {"format": bundles.FORMAT, "kind": kind, "version": version,
                "created_ms": int(time.time() * 1000) if created_ms is None else created_ms, "files": listed}
    manifest_bytes = json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode("utf-8")
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, "ykt-%s-%s.zip" % (kind, version))
    partial = target + ".partial"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        _add(archive, bundles.MANIFEST, manifest_bytes)
        _add(archive, bundles.SIGNATURE, key.sign(manifest_bytes))
        for relative, path in files.items():
            with open(path, "rb") as handle:
                _add(archive, bundles.FILES_PREFIX + relative, handle.read())
    os.replace(partial, target)
    return target


def _add(archive, name, data):
    info = zipfile.ZipInfo(name, ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/release.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make_key = commands.add_parser("keygen", help="a new release key (private file 0600, public hex printed)")
    make_key.add_argument("--out", required=True, help="where the private key goes (must not exist)")
    make = commands.add_parser("build", help="a signed bundle of this tree")
    make.add_argument("--kind", required=True, choices=bundles.KINDS)
    make.add_argument("--version", required=True, help="MAJOR.MINOR.PATCH, newer than what terminals run")
    make.add_argument("--key", required=True, help="the release key file (from keygen)")
    make.add_argument("--out", default="dist", help="output directory (default dist)")
    show = commands.add_parser("show", help="a bundle's manifest; with keys, whether a terminal takes it")
    show.add_argument("bundle")
    show.add_argument("--release-key", action="append", default=[], help="a release public key (hex)")
    show.add_argument("--kind", choices=bundles.KINDS, help="check for this kind of terminal (default: its own)")
    show.add_argument("--installed", help="the version the terminal runs")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            print(keygen(args.out))
        elif args.command == "build":
            path = build(args.kind, args.version, load_key(args.key), args.out)
            print("已生成 / built: %s" % path)
        else:
            return _show(args)
    except FileExistsError as error:
        print("文件已存在，不覆盖 / exists, not overwritten: %s" % error.filename, file=sys.stderr)
        return 4
    except FileNotFoundError as error:
        print("找不到文件 / no such file: %s" % error.filename, file=sys.stderr)
        return 4
    except bundles.BundleRefused as error:
        print(str(error), file=sys.stderr)
        return 2
    return 0


def _show(args):
    with zipfile.ZipFile(args.bundle) as archive:
        manifest = json.loads(archive.read(bundles.MANIFEST))
    print(json.dumps({key: value for key, value in manifest.items() if key != "files"}, ensure_ascii=False))
    print("%d 个文件 / files" % len(manifest.get("files", {})))
    if args.release_key:
        kind = args.kind or manifest.get("kind")
        if kind not in bundles.KINDS:
            raise bundles.BundleRefused("wrong_kind", "未知的终端类型 %r" % (kind,), "unknown kind %r" % (kind,))
        bundles.verify_bundle(args.bundle, kind, args.installed, bundles.public_keys(args.release_key))
        print("可安装 / a terminal would take it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
