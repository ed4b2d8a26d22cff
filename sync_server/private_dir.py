"""Owner-only files: the data directory holds ID numbers, PIN hashes and the master key.

Every process of ours that writes there sets umask 077 first (`owner_only_umask`, at the command
entry points), and each place that creates something asks for owner-only modes itself, so a library
caller with a looser umask still gets 0700 directories and 0600 files. SQLite gives the WAL and SHM
files the database file's own mode, so a 0600 database is enough for those. A directory made by an
older version (0755/0644) is tightened at start-up, with one line on stderr saying so.
"""
import os
import stat
import sys

OWNER_ONLY_UMASK = 0o077


def owner_only_umask():
    os.umask(OWNER_ONLY_UMASK)


def secure_dir(path, note=True):
    """Create `path` (mode 0700) or tighten it and everything under it to owner-only; returns the
    paths whose mode changed."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    changed = []
    for directory, _subdirectories, files in os.walk(path):     # each subdirectory is walked in turn
        for entry in [directory] + [os.path.join(directory, name) for name in files]:
            mode = os.lstat(entry)
            if stat.S_ISLNK(mode.st_mode) or not stat.S_IMODE(mode.st_mode) & 0o077:
                continue
            os.chmod(entry, stat.S_IMODE(mode.st_mode) & 0o700)
            changed.append(entry)
    if changed and note:
        print("数据目录权限已收紧为仅属主可读写（%d 项）：%s / data directory made owner-only (%d entries): %s"
              % (len(changed), path, len(changed), path), file=sys.stderr)
    return changed


def create_private_file(path):
    """Create an empty file of mode 0600 if `path` does not exist (before SQLite opens it)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True
