"""The part of tools/flash.py that runs where the files go: on a Raspberry Pi over ssh (sent as the
program text of `python3 -c`, so nothing has to be installed there first), or on the technician's
machine for an SD card's root mounted as a directory. One protocol for both, so what is tested on a
directory is what runs on a Pi.

Standard library only, and nothing newer than the Python 3.7 of older Raspberry Pi OS images.
Requests arrive on stdin as one JSON line; answers leave on stdout as JSON lines:

    {"op": "survey", "root": R, "paths": [...], "trees": [...], "read": [...], "list": [...]}
        -> {"entries": {path: {"type": "file"|"dir"|"link"|"other", "mode": 420, "sha256": ...,
            "target": ...}}, "contents": {path: base64}, "listing": {path: [names]}}   (paths absolute
            on the device; R is where the device's / is here: "/" on a running Pi, the mount point of
            an SD card's root)
    {"op": "apply", "root": R, "steps": [{"remove": [...], "entries": [{"path", "type", "mode",
     "size", "sha256", "target"}]}]}, then the bytes of each file entry in order
        -> {"step": i, "written": n} after each step, or {"error": {...}} where it stopped

A file is written beside its place, flushed, hashed as written, given its mode and renamed over the
old one, then its directory is flushed: a power cut or a killed flash leaves the old file or the new
one, never half of one, and the next run finds and redoes whatever is missing.
"""
import base64
import errno
import hashlib
import json
import os
import shutil
import sys

PARTIAL = ".ykt-partial"
MAX_READ_BYTES = 1 << 20
CHUNK_BYTES = 1 << 16


def here(root, path):
    """Where the device's absolute `path` is under `root`; only plain absolute paths are taken."""
    parts = path.split("/")
    if not path.startswith("/") or any(part in ("", ".", "..") for part in parts[1:]):
        raise ValueError("not a plain absolute path: %r" % (path,))
    return os.path.join(root, *parts[1:])


def describe(local):
    try:
        info = os.lstat(local)
    except OSError:
        return None
    mode = info.st_mode & 0o7777
    if os.path.islink(local):
        return {"type": "link", "mode": mode, "target": os.readlink(local)}
    if os.path.isdir(local):
        return {"type": "dir", "mode": mode}
    if not os.path.isfile(local):
        return {"type": "other", "mode": mode}
    digest = hashlib.sha256()
    try:
        with open(local, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(chunk)
    except OSError as error:
        return {"type": "file", "mode": mode, "sha256": None, "error": error.strerror}
    return {"type": "file", "mode": mode, "sha256": digest.hexdigest(), "size": info.st_size}


def survey(request):
    root = request["root"]
    entries = {}
    for path in request.get("paths", []):
        found = describe(here(root, path))
        if found is not None:
            entries[path] = found
    for tree in request.get("trees", []):
        top = here(root, tree)
        for directory, subdirectories, names in os.walk(top):
            subdirectories.sort()
            relative = os.path.relpath(directory, top)
            base = tree if relative == "." else tree + "/" + relative.replace(os.sep, "/")
            for name in sorted(subdirectories) + sorted(names):
                found = describe(os.path.join(directory, name))
                if found is not None:
                    entries[base + "/" + name] = found
        found = describe(top)
        if found is not None:
            entries[tree] = found
    contents = {}
    for path in request.get("read", []):
        local = here(root, path)
        try:
            if os.path.isfile(local) and not os.path.islink(local) and os.path.getsize(local) <= MAX_READ_BYTES:
                with open(local, "rb") as handle:
                    contents[path] = base64.b64encode(handle.read()).decode("ascii")
        except OSError:
            pass
    listing = {}
    for path in request.get("list", []):
        local = here(root, path)
        if os.path.isdir(local) and not os.path.islink(local):
            listing[path] = sorted(os.listdir(local))
    emit({"entries": entries, "contents": contents, "listing": listing})


def apply(request, stream):
    root = request["root"]
    if not os.path.isdir(root):
        emit({"error": {"step": 0, "path": "/", "errno": errno.ENOENT, "strerror": "root is not a directory"}})
        return
    owner = 0 if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    for number, step in enumerate(request["steps"]):
        written = 0
        current = None
        try:
            for path in step.get("remove", []):
                current = path
                remove(here(root, path))
            for entry in step["entries"]:
                current = entry["path"]
                place(root, entry, stream, owner)
                written += 1
        except OSError as error:
            emit({"error": {"step": number, "path": current, "errno": error.errno,
                            "strerror": error.strerror or str(error)}})
            return
        except ChangedWhileWritten as error:
            emit({"error": {"step": number, "path": current, "errno": None, "strerror": str(error)}})
            return
        emit({"step": number, "written": written})


class ChangedWhileWritten(Exception):
    pass


def remove(local):
    if os.path.islink(local) or (os.path.exists(local) and not os.path.isdir(local)):
        os.unlink(local)
    elif os.path.isdir(local):
        shutil.rmtree(local)


def place(root, entry, stream, owner):
    local = here(root, entry["path"])
    kind = entry["type"]
    if kind == "dir":
        # a mode of None: the system's own directory (/opt, /etc/systemd/system): made when missing,
        # otherwise left as the image has it (a link there too: some images link /opt elsewhere)
        if entry["mode"] is None and os.path.islink(local):
            return
        if os.path.islink(local):
            os.unlink(local)
        if not os.path.isdir(local):
            os.makedirs(local, 0o755)
        elif entry["mode"] is None:
            return
        if entry["mode"] is not None:
            os.chmod(local, entry["mode"])
        if owner is not None:
            os.lchown(local, owner, owner)
        return
    parent = os.path.dirname(local)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o755)
    if kind == "link":
        if os.path.islink(local) or os.path.isfile(local):
            os.unlink(local)
        os.symlink(entry["target"], local)
        if owner is not None:
            os.lchown(local, owner, owner)
        flush_directory(parent)
        return
    assert kind == "file", kind
    partial = local + PARTIAL
    digest = hashlib.sha256()
    left = entry["size"]
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            while left:
                chunk = stream.read(min(left, CHUNK_BYTES))
                if not chunk:
                    raise ChangedWhileWritten("the data ended early (the flash was cut off)")
                digest.update(chunk)
                handle.write(chunk)
                left -= len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        if digest.hexdigest() != entry["sha256"]:
            raise ChangedWhileWritten("%s changed on its way (hash differs)" % entry["path"])
        os.chmod(partial, entry["mode"])
        if owner is not None:
            os.lchown(partial, owner, owner)
        os.rename(partial, local)
    except BaseException:
        if os.path.lexists(partial):     # the run stops at this error; no half file stays behind
            os.unlink(partial)
        raise
    flush_directory(parent)


def flush_directory(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def emit(answer):
    sys.stdout.write(json.dumps(answer, sort_keys=True) + "\n")
    sys.stdout.flush()


def main():
    stream = sys.stdin.buffer
    request = json.loads(stream.readline().decode("utf-8"))
    if request["op"] == "survey":
        survey(request)
    elif request["op"] == "apply":
        apply(request, stream)
    else:
        raise ValueError("unknown op %r" % (request["op"],))


if __name__ == "__main__":
    main()
