"""Backups of the server's SQLite file while it serves, and putting one back.

    take_backup(db_path, backup_dir)      an online copy: ykt-20261204T031500Z.db + its .json manifest
    verify_backup(path)                   the copy is whole: its hash, SQLite's integrity check, a schema
    restore_backup(path, data_dir)        put a verified copy in place; the replaced file is kept

The copy is made with SQLite's online backup API (sqlite3.Connection.backup), page by page, while the
workers go on writing: what it holds is the database as one transaction saw it, so the ledger in a
copy balances as the live one does. It is written as `.partial`, checked with `PRAGMA
integrity_check`, flushed to disk, hashed, and only then renamed to its name beside a manifest
(SHA-256, size, time, schema version): a copy interrupted by a crash or a full disk is never taken
for a backup. The oldest copies beyond `keep` are removed after a new one is safe.

`ykt server --backup-dir DIR --backup-interval-s S` takes one every S seconds from the server's
scheduler process (sync_server/finance/scheduler.py), never from a worker; `ykt server backup --to
DIR` takes one now (a cron job or a technician before an update); `ykt server restore --from FILE`
puts one back with the server stopped.

What a backup does not hold: the master key (keys/master.key), which is written once at `ykt server
init` and must be kept apart from the data, offline, by whoever holds the site's keys; a restore
needs it in the data directory already. On PostgreSQL the database has its own tools (a standby,
pg_basebackup, pg_dump; README "Running on PostgreSQL in production"): these commands refuse it.
"""
import datetime
import hashlib
import json
import os
import shutil
import sqlite3

from sync_server import db as dbmod, keys, mistakes, pg_store

PREFIX = "ykt-"
SUFFIX = ".db"
MANIFEST_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"
DEFAULT_KEEP = 48
MAX_KEEP = 10000
MIN_INTERVAL_S = 5
MAX_INTERVAL_S = 7 * 86400
PAGES_PER_STEP = 256           # the live file is locked only while a step copies its pages
HASH_CHUNK_BYTES = 1 << 20
SQLITE_MAGIC = b"SQLite format 3\x00"


def refuse_postgresql(location):
    if pg_store.is_postgresql(location):
        raise mistakes.Mistake("PostgreSQL 的数据请用其自身工具备份（备库、pg_basebackup、pg_dump）",
                               "back up PostgreSQL with its own tools (a standby, pg_basebackup, pg_dump)")


def backup_name(now_ms):
    stamp = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return "%s%s%03dZ%s" % (PREFIX, stamp, now_ms % 1000, SUFFIX)


def time_text(ms):
    """'2026-12-04 11:15:00' in Beijing time, for people."""
    zone = datetime.timezone(datetime.timedelta(hours=8))
    return datetime.datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_sqlite(path):
    """(integrity check says ok, schema version) of a database file, opened read-only."""
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        version = conn.execute("SELECT max(number) FROM _migrations").fetchone()[0]
        return ok, version
    finally:
        conn.close()


def take_backup(db_path, backup_dir, keep=DEFAULT_KEEP, now_ms=None):
    """An online copy of the live database into backup_dir (made owner-only); returns its manifest."""
    refuse_postgresql(db_path)
    assert 1 <= keep <= MAX_KEEP, keep
    if not os.path.isfile(db_path):
        raise mistakes.NotReady("数据库不存在：%s（先运行 ykt server init）" % db_path,
                                "no database at %s (run `ykt server init` first)" % db_path)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    try:
        os.makedirs(backup_dir, mode=0o700, exist_ok=True)
        os.chmod(backup_dir, 0o700)
    except OSError as error:
        raise mistakes.FileMistake("无法使用备份目录 %s：%s" % (backup_dir, error.strerror or error),
                                   "cannot use the backup directory %s: %s" % (backup_dir, error.strerror or error))
    name = backup_name(now_ms)
    final = os.path.join(backup_dir, name)
    partial = final + PARTIAL_SUFFIX
    source = sqlite3.connect(db_path, timeout=dbmod.BUSY_TIMEOUT_MS / 1000)     # only read from
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(descriptor)
        target = sqlite3.connect(partial)
        try:
            source.backup(target, pages=PAGES_PER_STEP)
            target.execute("PRAGMA journal_mode=DELETE")       # one self-contained file, no -wal beside it
        finally:
            target.close()
    except (OSError, sqlite3.Error) as error:
        _remove_quietly(partial)
        raise mistakes.FileMistake("备份失败：%s" % error, "the backup failed: %s" % error)
    finally:
        source.close()
    ok, version = _check_sqlite(partial)
    if not ok:
        _remove_quietly(partial)
        raise mistakes.Mistake("备份副本未通过完整性检查，已丢弃", "the copy failed its integrity check; discarded")
    os.chmod(partial, 0o400)       # read it, never open it to write: that alone would change its bytes
    _fsync_path(partial)
    manifest = {"file": name, "sha256": _sha256(partial), "bytes": os.path.getsize(partial), "taken_ms": now_ms,
                "schema": version}
    os.rename(partial, final)
    manifest_path = final[:-len(SUFFIX)] + MANIFEST_SUFFIX
    with open(os.open(manifest_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
              encoding="utf-8") as handle:
        json.dump(manifest, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_path(backup_dir, directory=True)
    manifest["removed"] = prune(backup_dir, keep)
    return manifest


def list_backups(backup_dir):
    """The finished backups in backup_dir, oldest first (names sort by time)."""
    try:
        names = os.listdir(backup_dir)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.startswith(PREFIX) and name.endswith(SUFFIX))


def prune(backup_dir, keep):
    """Remove the oldest backups (and their manifests) beyond `keep`; returns the names removed."""
    removed = []
    for name in list_backups(backup_dir)[:-keep]:
        path = os.path.join(backup_dir, name)
        _remove_quietly(path)
        _remove_quietly(path[:-len(SUFFIX)] + MANIFEST_SUFFIX)
        removed.append(name)
    return removed


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def verify_backup(path):
    """The backup's manifest when the file is whole (hash, size, SQLite integrity); else a Mistake."""
    if not os.path.isfile(path):
        raise mistakes.FileMistake("找不到备份文件：%s" % path, "no backup file at %s" % path)
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise mistakes.MalformedInput("这不是数据库备份文件：%s" % path, "not a database backup: %s" % path)
    manifest_path = path[:-len(SUFFIX)] + MANIFEST_SUFFIX if path.endswith(SUFFIX) else path + MANIFEST_SUFFIX
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        expected = manifest["sha256"]
    except FileNotFoundError:
        raise mistakes.FileMistake("备份缺少清单文件 %s，无法确认其完整" % manifest_path,
                                   "the backup's manifest %s is missing: it cannot be verified" % manifest_path)
    except (ValueError, KeyError, TypeError):
        raise mistakes.MalformedInput("备份清单已损坏：%s" % manifest_path, "the backup's manifest is damaged: %s"
                                      % manifest_path)
    if _sha256(path) != expected:
        raise mistakes.MalformedInput("备份文件与其清单不符（已损坏或被改动）：%s" % path,
                                      "the backup does not match its manifest (damaged or altered): %s" % path)
    try:
        ok, version = _check_sqlite(path)
    except sqlite3.Error as error:
        raise mistakes.MalformedInput("备份文件不是可用的数据库：%s" % error, "the backup is not a usable database: %s"
                                      % error)
    if not ok:
        raise mistakes.MalformedInput("备份文件未通过完整性检查：%s" % path, "the backup fails its integrity check: %s"
                                      % path)
    return dict(manifest, schema=version)


def restore_backup(path, data_dir, force=False, now_ms=None):
    """Put a verified backup in place as data_dir's database (the server stopped). An existing
    database is refused unless `force`, and then kept beside it as ykt.db.replaced-<time>, with its
    -wal and -shm; nothing is deleted. The restored file is upgraded to this version's schema.
    Returns (manifest, the replaced file's path or None)."""
    location = dbmod.store_location(data_dir)
    refuse_postgresql(location)
    manifest = verify_backup(path)
    if not os.path.isfile(keys.master_key_path(data_dir)):
        raise mistakes.FileMistake(
            "数据目录 %s 中没有主密钥 %s：备份不含主密钥，请先放回单独保管的主密钥" % (data_dir, keys.master_key_path(data_dir)),
            "the data directory %s has no master key at %s: backups do not hold it; put the separately kept "
            "master key back first" % (data_dir, keys.master_key_path(data_dir)))
    target = dbmod.db_path(data_dir)
    if os.path.exists(target) and not force:
        raise mistakes.Mistake("数据目录中已有数据库 %s；确认服务器已停止后加 --force 覆盖（原文件会保留）" % target,
                               "%s already holds a database; with the server stopped, add --force to replace it "
                               "(the old file is kept)" % target)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    incoming = target + ".restoring"
    _remove_quietly(incoming)
    descriptor = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out, open(path, "rb") as source:
        shutil.copyfileobj(source, out, HASH_CHUNK_BYTES)
        out.flush()
        os.fsync(out.fileno())
    if _sha256(incoming) != manifest["sha256"]:
        _remove_quietly(incoming)
        raise mistakes.FileMistake("复制备份时出错，未作任何更改", "the backup was not copied whole; nothing changed")
    replaced = None
    if os.path.exists(target):
        replaced = "%s.replaced-%d" % (target, now_ms)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(target + suffix):
                os.rename(target + suffix, replaced + suffix)
        os.rename(target, replaced)
    os.rename(incoming, target)
    _fsync_path(data_dir, directory=True)
    dbmod.init_db(target).close()       # a backup from an older version gets this version's schema
    return manifest, replaced


def check_interval_s(interval_s):
    if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
        raise mistakes.Mistake("--backup-interval-s 须在 %d 到 %d 之间" % (MIN_INTERVAL_S, MAX_INTERVAL_S),
                               "--backup-interval-s must be %d to %d" % (MIN_INTERVAL_S, MAX_INTERVAL_S))


def check_keep(keep):
    if not 1 <= keep <= MAX_KEEP:
        raise mistakes.Mistake("--keep 须在 1 到 %d 之间" % MAX_KEEP, "--keep must be 1 to %d" % MAX_KEEP)
