"""The site master key file: created once with mode 0600, read at start-up, never printed or logged.

Everything secret on the site derives from this key (firmware.core.sam): terminal sync keys, card
sector keys, identity MACs. The server derives terminal keys again on each request instead of storing
them. The file holds 32 random bytes; a file of another size is refused rather than guessed at.
"""
import os

MASTER_KEY_BYTES = 32
MASTER_KEY_FILE_NAME = "master.key"
# The OLD system's card master key (firmware/core/legacy_card.py), handed over with the old card
# centre's export for the go-live migration: activation units get it in their provisioning file.
LEGACY_KEY_FILE_NAME = "legacy_master.key"


class MasterKeyError(RuntimeError):
    pass


def master_key_path(data_dir):
    return os.environ.get("YKT_MASTER_KEY_FILE") or os.path.join(data_dir, MASTER_KEY_FILE_NAME)


def legacy_key_path(data_dir):
    return os.path.join(data_dir, LEGACY_KEY_FILE_NAME)


def store_legacy_key(data_dir, source_path):
    """Keep the old system's master key (32 bytes) in the data directory, mode 0600."""
    try:
        with open(source_path, "rb") as handle:
            key = handle.read(MASTER_KEY_BYTES + 1)
    except OSError as error:
        raise MasterKeyError("无法读取旧系统主密钥文件 / cannot read the old master key file %s: %s"
                             % (source_path, error.strerror or error))
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError("旧系统主密钥文件长度错误 / old master key file has the wrong size (%s)" % source_path)
    write_private_file(legacy_key_path(data_dir), key)


def load_legacy_key(data_dir):
    """The old system's master key, or None when none was imported."""
    path = legacy_key_path(data_dir)
    if not os.path.exists(path):
        return None
    return load_master_key(path)


def create_master_key(path):
    """Write a fresh random key; refuses to replace an existing one (that would orphan every card)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        key = os.urandom(MASTER_KEY_BYTES)
        written = os.write(descriptor, key)
        assert written == MASTER_KEY_BYTES
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def ensure_master_key(path):
    """Create the key file if missing; returns True when it was created now."""
    if os.path.exists(path):
        return False
    create_master_key(path)
    return True


def load_master_key(path):
    try:
        with open(path, "rb") as handle:
            key = handle.read(MASTER_KEY_BYTES + 1)
    except FileNotFoundError:
        raise MasterKeyError("主密钥文件不存在，请先运行 `ykt server init` / master key file missing: "
                             "run `ykt server init` (%s)" % path)
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError("主密钥文件长度错误 / master key file has the wrong size (%s)" % path)
    if os.stat(path).st_mode & 0o077:
        raise MasterKeyError("主密钥文件权限过宽 / master key file is readable by others; chmod 600 %s" % path)
    return key


def write_private_file(path, data):
    """Write bytes to a file only the owner can read (provisioning files carry keys)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
