"""Firmware bundles (firmware/apps/bundles.py, tools/release.py): a real release key made and a real
bundle of this tree built and signed by the release tool as a process, verified and unpacked into an
empty slot, from which `ykt terminal --help` then runs. Every way a bundle can be wrong is refused
before anything is written: another site's key, another kind of terminal, an older or the same
version, a file altered after signing, a manifest altered after signing, a file the manifest does not
list, a path out of the slot or a link (even when signed), a size that lies, a member twice, not a zip.
"""
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.apps import bundles
from firmware.apps.bundles import BundleRefused, public_keys, unpack_bundle, verify_bundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "release.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import release  # noqa: E402


def tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def release_set(tmp_path_factory):
    """(key file, public hex, the bundle of this tree, version 1.3.0 for the POS)."""
    work = tmp_path_factory.mktemp("release")
    key_file = work / "release.key"
    made = tool("keygen", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    built = tool("build", "--kind", "pos", "--version", "1.3.0", "--key", str(key_file), "--out", str(work / "dist"))
    assert built.returncode == 0, built.stderr
    return key_file, public, str(work / "dist" / "ykt-pos-1.3.0.zip")


def test_a_release_key_is_kept_private(release_set):
    key_file, public, _bundle = release_set
    assert len(public) == 64 and int(public, 16) >= 0
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600 and os.path.getsize(key_file) == 32
    again = tool("keygen", "--out", str(key_file))
    assert again.returncode == 4 and "不覆盖" in again.stderr            # never overwrites a key


def test_the_tree_bundled_verifies_unpacks_and_runs(release_set, tmp_path):
    _key, public, bundle = release_set
    manifest = verify_bundle(bundle, "pos", "1.2.9", public_keys([public]))
    assert (manifest["kind"], manifest["version"]) == ("pos", "1.3.0")
    assert set(manifest["files"]) == set(release.tree_files())
    assert "firmware/apps/face_static/cashier.html" in manifest["files"]
    assert not [path for path in manifest["files"] if "__pycache__" in path or path.endswith(".pyc")]
    slot = tmp_path / "slot-b"
    unpack_bundle(bundle, "pos", None, public_keys([public]), str(slot))
    for path, entry in manifest["files"].items():
        with open(slot / path, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == entry["sha256"], path
    env = dict(os.environ, PYTHONPATH=str(slot))
    ran = subprocess.run([sys.executable, "-m", "ykt", "terminal", "--help"], cwd=str(slot), env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "--keypad" in ran.stdout, ran.stderr
    with pytest.raises(BundleRefused) as busy:
        unpack_bundle(bundle, "pos", None, public_keys([public]), str(slot))
    assert busy.value.code == "slot_busy"
    shown = tool("show", bundle, "--release-key", public, "--installed", "1.2.0")
    assert shown.returncode == 0 and "a terminal would take it" in shown.stdout


def rewrite(bundle, out, replace=None, add=None, drop=()):
    """A copy of the bundle with members replaced, added (even twice) or dropped."""
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename in drop:
                continue
            target.writestr(info, (replace or {}).get(info.filename, source.read(info.filename)))
        for name, data in (add or []):
            target.writestr(name, data)
    return str(out)


def signed(out, key, files, kind="pos", version="9.0.0", link=None, manifest_files=None):
    """A bundle signed with `key` of `files` {path: bytes}; `manifest_files` overrides what it lists."""
    listed = manifest_files or {path: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                                for path, data in files.items()}
    manifest = json.dumps({"format": 1, "kind": kind, "version": version, "created_ms": 0, "files": listed},
                          sort_keys=True).encode()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(bundles.MANIFEST, manifest)
        archive.writestr(bundles.SIGNATURE, key.sign(manifest))
        for path, data in files.items():
            info = zipfile.ZipInfo(bundles.FILES_PREFIX + path)
            if path == link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return str(out)


def refusal(bundle, public, kind="pos", installed="1.2.0"):
    with pytest.raises(BundleRefused) as refused:
        verify_bundle(bundle, kind, installed, public_keys([public]))
    return refused.value.code


def test_another_kind_or_an_old_version_is_refused(release_set):
    _key, public, bundle = release_set
    assert refusal(bundle, public, kind="dispenser") == "wrong_kind"
    assert refusal(bundle, public, installed="1.3.0") == "not_newer"
    assert refusal(bundle, public, installed="2.0.0") == "not_newer"
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    assert refusal(bundle, other) == "bad_signature"
    assert verify_bundle(bundle, "pos", "1.2.0", public_keys([other, public]))["version"] == "1.3.0"   # key roll-over


def test_anything_altered_after_signing_is_refused(release_set, tmp_path):
    _key, public, bundle = release_set
    member = bundles.FILES_PREFIX + "firmware/core/pos.py"
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read(bundles.MANIFEST))
        original = archive.read(member)
    same_size = original.replace(b"IDLE", b"IDLX", 1)
    assert rewrite(bundle, tmp_path / "a.zip", replace={member: same_size}) and \
        refusal(str(tmp_path / "a.zip"), public) == "altered"
    grown = rewrite(bundle, tmp_path / "b.zip", replace={member: original + b"\nimport os\n"})
    assert refusal(grown, public) == "altered"
    manifest["version"] = "9.9.9"
    forged = rewrite(bundle, tmp_path / "c.zip", replace={bundles.MANIFEST: json.dumps(manifest).encode()})
    assert refusal(forged, public) == "bad_signature"
    extra = rewrite(bundle, tmp_path / "d.zip", add=[(bundles.FILES_PREFIX + "sitecustomize.py", b"import evil")])
    assert refusal(extra, public) == "unlisted"
    missing = rewrite(bundle, tmp_path / "e.zip", drop=(member,))
    assert refusal(missing, public) == "incomplete"
    unsigned = rewrite(bundle, tmp_path / "f.zip", drop=(bundles.SIGNATURE,))
    assert refusal(unsigned, public) == "not_a_bundle"
    (tmp_path / "g.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert refusal(str(tmp_path / "g.zip"), public) == "not_a_bundle"
    assert refusal(str(tmp_path / "nothing.zip"), public) == "missing"


@pytest.mark.parametrize("path", ["../evil.py", "/etc/cron.d/evil", "firmware/../../evil.py", "a\\b.py",
                                  "firmware//x.py", "./x.py", "x y.py"])
def test_unsafe_paths_are_refused_even_when_signed(tmp_path, path):
    key = Ed25519PrivateKey.generate()
    bundle = signed(tmp_path / "p.zip", key, {path: b"print(1)"})
    public = key.public_key().public_bytes_raw().hex()
    assert refusal(bundle, public) == "bad_path"
    assert not (tmp_path / "evil.py").exists()


def test_links_lying_sizes_and_doubles_are_refused(tmp_path):
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw().hex()
    link = signed(tmp_path / "l.zip", key, {"firmware/x.py": b"/etc/shadow"}, link="firmware/x.py")
    assert refusal(link, public) == "bad_path"
    lying = signed(tmp_path / "s.zip", key, {"x.py": b"1234"},
                   manifest_files={"x.py": {"sha256": hashlib.sha256(b"1234").hexdigest(), "bytes": 3}})
    assert refusal(lying, public) == "altered"
    bomb = signed(tmp_path / "b.zip", key, {"x.py": b"\0" * (bundles.MAX_FILE_BYTES + 1)})
    assert refusal(bomb, public) == "altered"            # refused by its listed size, before hashing
    good = signed(tmp_path / "g.zip", key, {"x.py": b"1"})
    with pytest.warns(UserWarning, match="Duplicate name"):      # zipfile warns, and writes it anyway
        doubled = rewrite(good, tmp_path / "d.zip", add=[(bundles.FILES_PREFIX + "x.py", b"2")])
    assert refusal(doubled, public) == "duplicate"
    assert refusal(signed(tmp_path / "v.zip", key, {"x.py": b"1"}, version="1.03.0"), public) == "bad_version"


@pytest.mark.parametrize("text, expected", [("1.3.0", (1, 3, 0)), ("0.0.1", (0, 0, 1)), ("10.20.30", (10, 20, 30))])
def test_versions(text, expected):
    assert bundles.parse_version(text) == expected


@pytest.mark.parametrize("text", ["1.3", "1.3.0-rc1", "v1.3.0", "01.3.0", "1.3.0 ", 130, None, "99999.0.0"])
def test_bad_versions(text):
    with pytest.raises(BundleRefused):
        bundles.parse_version(text)
