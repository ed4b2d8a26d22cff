#!/usr/bin/env python3
"""Flash a terminal: its identity and keys, its settings, its firmware and the services that start it.

    python tools/flash.py flash --target dir:/media/sd/rootfs --bundle dist/ykt-pos-1.3.0.zip \\
        --provision terminal-12.json --reader pn532:/dev/ttyS0 --face 8800
    python tools/flash.py flash --target ssh://pi@10.0.0.5 --bundle dist/ykt-dispenser-1.3.0.zip \\
        --server https://ykt.example.edu --user tech --merchant 7 --location "3号楼开水房"
    python tools/flash.py flash --target board:/dev/ttyUSB0 --provision water-9.json --setting price_fen_per_litre=30
    python tools/flash.py verify --target ssh://pi@10.0.0.5

A Raspberry Pi's root file system is the target either as a directory (an SD card's root mounted on
the technician's machine) or over ssh (a running Pi; the system's own `ssh` with the technician's keys
or agent, BatchMode: never a password prompt half-way). What lands there:

    /etc/ykt/                        0700: terminal.json (the provisioning: identity and keys, 0600),
                                     terminal.env (reader, screen, keypad...: the unit's settings, 0600)
    /var/lib/ykt/                    0700, the only place written at run time (StateDirectory=):
        slots/a/, slots/state.json   the firmware unpacked into the A/B slots (firmware/apps/slots.py)
        data/                        the journal (made empty; a flash never touches what is in it)
        clock                        the saved clock (ykt-clock.service)
    /opt/ykt/supervisor/             the supervisor's own copy of the flashed firmware (updates never
                                     replace it, so a bad update cannot take its own rollback away)
    /opt/ykt/bin/ykt-clock           saves and restores the clock (the Pi has no battery clock)
    /opt/ykt/flash-manifest.json     every path written with its SHA-256 and mode (0600), and how far
                                     the flash got: `verify` compares the device with it
    /etc/systemd/system/             ykt-terminal.service, ykt-clock.service, ykt-clock-save.{service,
                                     timer}, enabled through their .wants links as systemctl would

Every step compares the target with what it should hold and writes only what differs (each file
written beside its place, flushed, renamed), records the steps done in the manifest, and at the end
reads everything back and compares hashes. A flash cut off half-way says which step stopped and why;
running the same command again finishes it. The bundle is checked (signature, kind, every member's
hash) before anything is written: a refused bundle leaves the device as it was.

A water dispenser on an ESP32-class board (`--target board:PORT`) goes through tools/flash_board.py.
Messages are Chinese; `--lang en` for English. Keys are never printed.
Exit codes: 0 done; 2 a mistake or refusal (the line says which); 3 the device is not as it should
be (half flashed, or `verify` found a difference): run the flash again.
"""
import argparse
import base64
import getpass
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from firmware.apps import bundles  # noqa: E402
from firmware.apps.slots import STATE_FILE, Slots  # noqa: E402
from sync_server.messages import BilingualError  # noqa: E402
from sync_server.releases import KIND_OF_CATEGORY  # noqa: E402

TARGET_FILES = os.path.join(ROOT, "tools", "flash_target")
ON_TARGET = os.path.join(TARGET_FILES, "on_target.py")

ETC_DIR = "/etc/ykt"
PROVISION_PATH = ETC_DIR + "/terminal.json"
CONFIG_PATH = ETC_DIR + "/terminal.env"
STATE_DIR = "/var/lib/ykt"
SLOTS_DIR = STATE_DIR + "/slots"
SLOTS_STATE_PATH = SLOTS_DIR + "/" + STATE_FILE
DATA_DIR = STATE_DIR + "/data"
OPT_DIR = "/opt/ykt"
SUPERVISOR_DIR = OPT_DIR + "/supervisor"
BIN_DIR = OPT_DIR + "/bin"
CLOCK_TOOL = BIN_DIR + "/ykt-clock"
MANIFEST_PATH = OPT_DIR + "/flash-manifest.json"
UNIT_DIR = "/etc/systemd/system"
TERMINAL_UNIT = "ykt-terminal.service"
# unit -> the target whose .wants link enables it (None: started by its timer only)
UNITS = (("ykt-clock.service", "sysinit.target"), ("ykt-clock-save.service", None),
         ("ykt-clock-save.timer", "timers.target"), (TERMINAL_UNIT, "multi-user.target"))
# The image's Python with the terminal's dependencies (README: "Flashing a terminal")
DEFAULT_PYTHON = "/opt/ykt/venv/bin/python"
MANIFEST_FORMAT = 1

COMMAND_OF_KIND = {"pos": "terminal", "dispenser": "dispenser", "activation": "activation"}
KIND_NAMES = {"pos": ("消费机", "canteen POS"), "dispenser": ("开水机", "water dispenser"),
              "activation": ("激活机", "activation unit")}
# Settings that only one kind's `ykt` command takes (firmware/apps/cli.py)
KIND_OPTIONS = {"keypad": "pos", "scanner": "pos", "pins": "dispenser", "ble": "dispenser"}

EXIT_MISTAKE = 2
EXIT_NOT_AS_FLASHED = 3
EXIT_INTERRUPTED = 130


class FlashMistake(BilingualError):
    """Not done as typed, or refused (a bad bundle, the wrong kind, an unreachable host): exit 2,
    nothing more written."""


class TargetProblem(BilingualError):
    """The device is not as it should be: half flashed, or a file differs. Exit 3; a new run mends it."""


class Out:
    """What the technician reads: one language per run, each line flushed at once."""

    def __init__(self, lang):
        self.lang = lang

    def say(self, zh, en):
        print(en if self.lang == "en" else zh, flush=True)


# -- targets ------------------------------------------------------------------------------------

class Target:
    """Where a Pi's / is: runs tools/flash_target/on_target.py there (one protocol for every target)."""

    root = "/"

    def helper_command(self):
        raise NotImplementedError

    def unreachable(self, code, text):
        return None

    def call(self, request, payload=(), on_answer=None):
        """Send one request (and the payload's bytes after it); the answers, each given to
        `on_answer` as it arrives."""
        request = dict(request, root=self.root)
        answers = []
        with tempfile.TemporaryFile() as errors:
            try:
                process = subprocess.Popen(self.helper_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=errors)
            except FileNotFoundError as error:
                raise FlashMistake("找不到程序 %s" % error.filename, "no such program: %s" % error.filename)
            writer = threading.Thread(target=_feed, args=(process.stdin, request, payload), daemon=True)
            writer.start()
            for line in process.stdout:
                try:
                    answer = json.loads(line)
                except ValueError:
                    continue         # a login banner or the like: not ours
                answers.append(answer)
                if on_answer is not None:
                    on_answer(answer)
            process.wait()
            writer.join()
            errors.seek(0)
            text = errors.read().decode("utf-8", "replace")
        if process.returncode != 0:
            problem = self.unreachable(process.returncode, text)
            if problem is not None:
                raise problem
            last = _last_line(text) or "exit %d" % process.returncode
            raise TargetProblem("目标上的刷机程序出错：%s" % last, "the flashing program on the target failed: %s" % last)
        return answers

    def survey(self, paths=(), trees=(), read=(), listing=()):
        answers = self.call({"op": "survey", "paths": list(paths), "trees": list(trees), "read": list(read),
                             "list": list(listing)})
        if len(answers) != 1 or "entries" not in answers[0]:
            raise TargetProblem("目标没有回答", "no answer from the target")
        answer = answers[0]
        answer["contents"] = {path: base64.b64decode(text) for path, text in answer["contents"].items()}
        return answer

    def shell(self, command):
        """Run a shell command on a running Pi (systemctl); (exit code, output)."""
        raise NotImplementedError

    def close(self):
        pass


def _feed(stream, request, payload):
    try:
        stream.write((json.dumps(request) + "\n").encode("utf-8"))
        for chunk in payload:
            stream.write(chunk)
    except BrokenPipeError:
        pass             # the far side stopped at an error: its answer says which
    finally:
        try:
            stream.close()
        except BrokenPipeError:
            pass


def _last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class DirTarget(Target):
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.label = "dir:" + self.root
        if not os.path.isdir(self.root):
            raise FlashMistake("目标目录 %s 不存在（SD 卡的根分区挂载了吗？）" % self.root,
                               "no directory %s (is the SD card's root partition mounted?)" % self.root)

    def helper_command(self):
        return [sys.executable, ON_TARGET]

    def shell(self, command):
        done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr


class SshTarget(Target):
    def __init__(self, user, host, port, root, identity=None, options=(), python="python3"):
        self.user, self.host, self.port, self.root = user, host, port, root
        self.identity, self.options, self.python = identity, list(options), python
        self.control_dir = None
        self.label = "ssh://%s%s%s%s" % (user + "@" if user else "", host, ":%d" % port if port else "",
                                         "" if root == "/" else root)

    def ssh_command(self, remote):
        """One connection for the whole run (ControlMaster): a flash makes a handful of calls, and on a
        Pi over Wi-Fi each new connection costs a second."""
        if self.control_dir is None:
            self.control_dir = tempfile.mkdtemp(prefix="ykt-ssh-", dir="/tmp")   # short: a socket path
        command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ControlMaster=auto", "-o",
                   "ControlPath=%s/%%C" % self.control_dir, "-o", "ControlPersist=60"]
        if self.port:
            command += ["-p", str(self.port)]
        if self.identity:
            command += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        for option in self.options:
            command += ["-o", option]
        return command + ["%s@%s" % (self.user, self.host) if self.user else self.host, remote]

    def helper_command(self):
        with open(ON_TARGET, encoding="utf-8") as handle:
            source = handle.read()
        return self.ssh_command("%s -c %s" % (shlex.quote(self.python), shlex.quote(source)))

    def unreachable(self, code, text):
        if code == 255:          # ssh's own failure: no connection, no key, unknown host key
            last = _last_line(text) or "ssh exit 255"
            return FlashMistake("无法连接 %s：%s" % (self.label, last), "cannot reach %s: %s" % (self.label, last))
        if code == 127:
            return FlashMistake("%s 上没有 %s" % (self.label, self.python), "no %s on %s" % (self.python, self.label))
        return None

    def shell(self, command):
        done = subprocess.run(self.ssh_command(command), capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr

    def close(self):
        """Ends the shared connection (it would end by itself a minute after the last use)."""
        if self.control_dir is None:
            return
        command = self.ssh_command("")
        subprocess.run(command[:-1] + ["-O", "exit"], capture_output=True, timeout=60)
        shutil.rmtree(self.control_dir, ignore_errors=True)
        self.control_dir = None


def parse_target(text, args):
    """dir:PATH or a path; ssh://[user@]host[:port][/root]; board:PORT -> a Target, or ("board", port)."""
    if text.startswith("board:"):
        port = text[len("board:"):]
        if not port:
            raise FlashMistake("开发板目标缺少串口：board:/dev/ttyUSB0", "a board target needs its port: board:/dev/ttyUSB0")
        return ("board", port)
    if text.startswith("ssh://"):
        parsed = urllib.parse.urlsplit(text)
        try:
            port = parsed.port
        except ValueError:
            port = -1
        if not parsed.hostname or port == -1 or parsed.query or parsed.fragment or parsed.password:
            raise FlashMistake("无效的 ssh 目标 %r（应为 ssh://用户@主机[:端口][/根目录]）" % text,
                               "bad ssh target %r (ssh://user@host[:port][/root])" % text)
        root = urllib.parse.unquote(parsed.path) or "/"
        if any(part in (".", "..") for part in root.split("/")):
            raise FlashMistake("ssh 目标的路径不能含 . 或 ..：%r" % root, "no . or .. in the ssh target's path: %r" % root)
        root = "/" + "/".join(part for part in root.split("/") if part)
        return SshTarget(parsed.username, parsed.hostname, port, root, args.identity, args.ssh_option,
                         args.remote_python)
    if text.startswith("dir:"):
        text = text[len("dir:"):]
    elif "://" in text or not (text.startswith("/") or text.startswith(".")):
        raise FlashMistake("无效的目标 %r：应为 dir:/媒体/根目录、ssh://用户@主机 或 board:/dev/ttyUSB0" % text,
                           "bad target %r: dir:/path/to/root, ssh://user@host or board:/dev/ttyUSB0" % text)
    if not text:
        raise FlashMistake("目录目标缺少路径", "a dir target needs its path")
    return DirTarget(text)


# -- what is written ----------------------------------------------------------------------------

class Entry:
    """One thing on the target: a directory (mode None: the system's own, only made when missing), a
    file (bytes in `data` or a local file `source`), or a link."""

    __slots__ = ("path", "type", "mode", "sha256", "size", "data", "source", "target", "runtime")

    def __init__(self, path, type, mode=None, data=None, source=None, target=None, runtime=False):
        self.path, self.type, self.mode, self.data, self.source, self.target = path, type, mode, data, source, target
        self.runtime = runtime       # slots/state.json: the running terminal changes it (updates)
        self.sha256 = self.size = None
        if type == "file":
            if data is None:
                with open(source, "rb") as handle:
                    data_for_hash = handle.read()
            else:
                data_for_hash = data
            self.sha256 = hashlib.sha256(data_for_hash).hexdigest()
            self.size = len(data_for_hash)

    def meta(self):
        return {"path": self.path, "type": self.type, "mode": self.mode, "size": self.size, "sha256": self.sha256,
                "target": self.target}

    def listed(self, step):
        """Its line in the manifest."""
        found = {"type": self.type, "mode": self.mode, "step": step}
        if self.type == "file":
            found["sha256"] = None if self.runtime else self.sha256
        if self.runtime:
            found["runtime"] = True
        if self.type == "link":
            found["target"] = self.target
        return found

    def chunks(self):
        if self.data is not None:
            yield self.data
            return
        with open(self.source, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 16), b""):
                yield chunk


class Step:
    def __init__(self, key, zh, en, entries, trees=()):
        self.key, self.zh, self.en, self.entries, self.trees = key, zh, en, entries, tuple(trees)


def tree_entries(local_root, device_root, file_mode=0o644, dir_mode=0o755):
    entries = [Entry(device_root, "dir", dir_mode)]
    for directory, subdirectories, names in os.walk(local_root):
        subdirectories.sort()
        relative = os.path.relpath(directory, local_root).replace(os.sep, "/")
        base = device_root if relative == "." else device_root + "/" + relative
        for name in sorted(subdirectories):
            entries.append(Entry(base + "/" + name, "dir", dir_mode))
        for name in sorted(names):
            entries.append(Entry(base + "/" + name, "file", file_mode, source=os.path.join(directory, name)))
    return entries


def unit_text(name, python, kind, document):
    with open(os.path.join(TARGET_FILES, name), encoding="utf-8") as handle:
        text = handle.read()
    description = "%s %d (%s, merchant %d)" % (KIND_NAMES[kind][1], document["terminal_id"], kind,
                                               document["merchant_id"])
    text = text.replace("@PYTHON@", python).replace("@COMMAND@", COMMAND_OF_KIND[kind])
    text = text.replace("@DESCRIPTION@", description)
    assert not re.search(r"@[A-Z]+@", text), name
    return text.encode("utf-8")


def config_text(config):
    lines = ["# tools/flash.py: this terminal's settings, read by %s (EnvironmentFile=)." % TERMINAL_UNIT,
             "# Change them here and `systemctl restart %s`; a new flash writes this file again." % TERMINAL_UNIT,
             "YKT_READER=%s" % config["reader"],
             'YKT_OPTIONS="%s"' % " ".join(config["options"])]
    return ("\n".join(lines) + "\n").encode("utf-8")


def build_steps(stage, document, provision_bytes, config, kind, python):
    """The steps in the order they are written: identity first (a registration is on the device at
    once), the links that enable the services last (a half-flashed card does not boot into a
    terminal that is not all there)."""
    slot_stage = os.path.join(stage, "slots")
    units_dir = UNIT_DIR
    steps = [
        Step("identity", "终端身份与密钥", "identity and keys",
             [Entry(ETC_DIR, "dir", 0o700), Entry(PROVISION_PATH, "file", 0o600, data=provision_bytes)]),
        Step("config", "终端设置", "settings",
             [Entry(ETC_DIR, "dir", 0o700), Entry(CONFIG_PATH, "file", 0o600, data=config_text(config))]),
        Step("slots", "固件槽 a", "firmware slot a",
             [Entry(STATE_DIR, "dir", 0o700), Entry(DATA_DIR, "dir", 0o700), Entry(SLOTS_DIR, "dir", 0o755)]
             + tree_entries(os.path.join(slot_stage, "a"), SLOTS_DIR + "/a")
             + [Entry(SLOTS_STATE_PATH, "file", 0o644, source=os.path.join(slot_stage, STATE_FILE), runtime=True)],
             trees=[SLOTS_DIR]),
        Step("supervisor", "守护程序", "supervisor",
             [Entry("/opt", "dir"), Entry(OPT_DIR, "dir", 0o755)]
             + tree_entries(os.path.join(slot_stage, "a"), SUPERVISOR_DIR),
             trees=[SUPERVISOR_DIR]),
        Step("services", "时钟与系统服务", "clock and services",
             [Entry(BIN_DIR, "dir", 0o755), Entry(CLOCK_TOOL, "file", 0o755, source=os.path.join(TARGET_FILES,
                                                                                              "ykt-clock")),
              Entry("/etc/systemd", "dir"), Entry(units_dir, "dir")]
             + [Entry(units_dir + "/" + name, "file", 0o644, data=unit_text(name, python, kind, document))
                for name, _wanted_by in UNITS]),
        Step("enable", "开机自动启动", "started at boot",
             [entry for name, wanted_by in UNITS if wanted_by
              for entry in (Entry("%s/%s.wants" % (units_dir, wanted_by), "dir"),
                            Entry("%s/%s.wants/%s" % (units_dir, wanted_by, name), "link",
                                  target="%s/%s" % (units_dir, name)))]),
    ]
    return steps


# -- comparing ----------------------------------------------------------------------------------

def state_matches(content, version, kind):
    """Whether slots/state.json is still that of a fresh install of `version` (a re-run keeps it)."""
    try:
        state = json.loads(content)
        return (state["version"], state["kind"], state["active"], state["trial"],
                [item["event"] for item in state["history"]]) == (version, kind, "a", None, ["installed"])
    except (ValueError, KeyError, TypeError):
        return False


def entry_problem(path, expected, found, contents, version, kind):
    """(zh, en) of what is wrong with one path, or None. `expected` is a manifest line."""
    if found is None:
        return "缺失", "missing"
    if expected["type"] == "dir":
        if found["type"] == "dir" or (expected["mode"] is None and found["type"] == "link"):
            if expected["mode"] is not None and found["mode"] != expected["mode"]:
                return ("权限为 %o，应为 %o" % (found["mode"], expected["mode"]),
                        "mode %o, should be %o" % (found["mode"], expected["mode"]))
            return None
        return "应为目录", "should be a directory"
    if expected["type"] == "link":
        if found["type"] != "link" or found.get("target") != expected["target"]:
            return "链接不对", "not the right link"
        return None
    if found["type"] != "file":
        return "应为文件（此处是 %s）" % found["type"], "should be a file (a %s here)" % found["type"]
    if expected.get("runtime"):
        if contents.get(path) is None or not _runtime_ok(contents[path], version, kind):
            return "内容不对", "not right"
    elif found.get("sha256") != expected["sha256"]:
        return "内容已改动（哈希不符）", "changed (its hash differs)"
    if found["mode"] != expected["mode"]:
        return ("权限为 %o，应为 %o" % (found["mode"], expected["mode"]),
                "mode %o, should be %o" % (found["mode"], expected["mode"]))
    return None


def _runtime_ok(content, version, kind):
    """slots/state.json as `verify` takes it after the terminal has run: readable, of this kind,
    naming a slot (an update since the flash is fine)."""
    try:
        state = json.loads(content)
        return state["kind"] == kind and state["active"] in ("a", "b") and bool(state["version"])
    except (ValueError, KeyError, TypeError):
        return False


def extras(survey, trees, wanted):
    """The topmost paths under the owned trees that should not be there."""
    found = sorted(path for path in survey["entries"] for tree in trees
                   if path.startswith(tree + "/") and path not in wanted)
    topmost = []
    for path in found:
        if not any(path.startswith(top + "/") for top in topmost):
            topmost.append(path)
    return topmost


# -- provisioning -------------------------------------------------------------------------------

def parse_provisioning(data, where):
    try:
        document = json.loads(data.decode("utf-8"))
        assert isinstance(document, dict)
        int(document["terminal_id"]), int(document["merchant_id"]), int(document["category"])
        assert isinstance(document["sam_keys"], dict) and document["sam_keys"]
        assert isinstance(document["release_keys"], list)
        assert isinstance(document["server_url"], str)
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
        raise FlashMistake("%s 不是终端配置文件（ykt hall terminal-register --out 的 JSON）" % where,
                           "%s is not a provisioning file (the JSON of ykt hall terminal-register --out)" % where)
    return document


def read_provision_file(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise FlashMistake("无法读取终端配置文件 %s：%s" % (path, error.strerror),
                           "cannot read the provisioning file %s: %s" % (path, error.strerror))
    return data, parse_provisioning(data, path)


def register_on_server(args, out):
    """Register a terminal through the admin pages, signed in as a staff user with the admin role;
    the provisioning document's bytes as the server sent them (never shown)."""
    import httpx
    server = args.server.rstrip("/")
    parsed = urllib.parse.urlsplit(server)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FlashMistake("无效的服务器地址 %r" % args.server, "bad server URL %r" % args.server)
    if parsed.scheme == "http" and not _loopback(parsed.hostname):
        out.say("注意：%s 不是 https，密码和密钥将以明文传输" % server,
                "warning: %s is not https: the password and the keys cross the network in clear" % server)
    password = os.environ.get("YKT_ADMIN_PASSWORD")
    if password is None:
        password = getpass.getpass("%s 的密码 / password of %s: " % (args.user, args.user))
    if not password:
        raise FlashMistake("没有密码", "no password")
    out.say("在 %s 登记新终端（商户 %d）…" % (server, args.merchant),
            "registering a new terminal at %s (merchant %d)..." % (server, args.merchant))
    try:
        with httpx.Client(base_url=server, timeout=30, follow_redirects=False) as http:
            page = http.get("/admin/sign-in")
            answer = http.post("/admin/sign-in", data={"csrf_token": _token(page, server), "username": args.user,
                                                       "password": password})
            if answer.status_code != 302:
                raise FlashMistake("登录失败：用户名或密码不对，或账号已停用", "sign-in refused: wrong username or "
                                   "password, or the account is disabled")
            page = http.get("/admin/terminals")
            if page.status_code == 403:
                raise FlashMistake("用户 %s 没有管理员权限" % args.user, "user %s is not an administrator" % args.user)
            answer = http.post("/admin/terminals/register", data={
                "csrf_token": _token(page, server), "merchant_id": str(args.merchant), "location": args.location or ""})
    except httpx.HTTPError as error:
        raise FlashMistake("无法连接服务器 %s：%s" % (server, error), "cannot reach the server %s: %s" % (server, error))
    if answer.status_code != 200 or not answer.headers.get("Content-Type", "").startswith("application/json"):
        reason = " ".join(re.findall(r'class="flash flash-error"[^>]*>([^<]*)<', answer.text)) or \
            "HTTP %d" % answer.status_code
        raise FlashMistake("服务器拒绝登记：%s" % reason, "the server refused the registration: %s" % reason)
    return answer.content, parse_provisioning(answer.content, server)


def _token(page, server):
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if page.status_code != 200 or found is None:
        raise FlashMistake("%s 不像 ykt 服务器（没有管理登录页）" % server,
                           "%s does not look like a ykt server (no admin sign-in page)" % server)
    return found.group(1)


def _loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def obtain_provisioning(args, out, survey=None):
    """(bytes, document): from --provision, the target's own (a re-run with --server), or a new
    registration on the server."""
    if args.provision and args.server:
        raise FlashMistake("--provision 与 --server 只能用一个", "give --provision or --server, not both")
    if args.provision:
        return read_provision_file(args.provision)
    if not (args.server and args.user and args.merchant is not None):
        raise FlashMistake("需要 --provision 文件，或 --server、--user 和 --merchant 在服务器上登记",
                           "give --provision FILE, or --server, --user and --merchant to register on the server")
    held = survey["contents"].get(PROVISION_PATH) if survey is not None else None
    if held is not None:
        try:
            document = parse_provisioning(held, PROVISION_PATH)
        except FlashMistake:
            raise FlashMistake("目标上的 %s 已损坏：请用 --provision 指定终端配置文件" % PROVISION_PATH,
                               "%s on the target is damaged: give the provisioning file with --provision"
                               % PROVISION_PATH)
        if document["server_url"].rstrip("/") != args.server.rstrip("/"):
            raise FlashMistake("目标已是服务器 %s 的终端 %d：用 --provision 指定要写入的身份"
                               % (document["server_url"], document["terminal_id"]),
                               "the target is terminal %d of the server %s: give the identity to write with "
                               "--provision" % (document["terminal_id"], document["server_url"]))
        out.say("目标上已有终端 %d 的身份，沿用，不再登记" % document["terminal_id"],
                "the target already holds terminal %d's identity: kept, nothing registered" % document["terminal_id"])
        return held, document
    return register_on_server(args, out)


def kind_of(document, bundle_kind, asked_kind):
    category = int(document["category"])
    kind = KIND_OF_CATEGORY.get(category)
    if kind is None:
        raise FlashMistake("终端 %d 所属商户的类别（%d）没有终端可刷" % (document["terminal_id"], category),
                           "terminal %d's merchant is of category %d, which has no terminal to flash"
                           % (document["terminal_id"], category))
    if asked_kind and asked_kind != kind:
        raise FlashMistake("终端 %d 是%s（%s），不是 --kind %s" % (document["terminal_id"], KIND_NAMES[kind][0], kind,
                                                               asked_kind),
                           "terminal %d is a %s (%s), not --kind %s" % (document["terminal_id"], KIND_NAMES[kind][1],
                                                                       kind, asked_kind))
    if bundle_kind is not None and bundle_kind != kind:
        raise FlashMistake("固件包是%s（%s）的，终端 %d 的商户要%s（%s）" % (
            KIND_NAMES.get(bundle_kind, ("?",))[0], bundle_kind, document["terminal_id"], KIND_NAMES[kind][0], kind),
            "the bundle is for a %s (%s), terminal %d's merchant needs a %s (%s)" % (
                KIND_NAMES.get(bundle_kind, ("?", "?"))[1], bundle_kind, document["terminal_id"], KIND_NAMES[kind][1],
                kind))
    return kind


# -- the bundle ---------------------------------------------------------------------------------

def peek_bundle(path):
    """(kind, version) of a bundle whose members match its manifest. The signature needs the
    provisioning's release keys and is checked later (Slots.first_install); this catches a damaged or
    altered bundle before a terminal is registered for it."""
    if not path:
        raise FlashMistake("需要 --bundle 固件包（tools/release.py build 生成）",
                           "give --bundle (a firmware bundle from tools/release.py build)")
    if not os.path.isfile(path):
        raise FlashMistake("找不到固件包 %s" % path, "no bundle at %s" % path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(bundles.MANIFEST))
            for name in manifest["files"]:
                bundles.check_path(name)
            bundles.check_files(archive, manifest)
            return manifest["kind"], manifest["version"]
    except bundles.BundleRefused as refused:
        if refused.code != "altered":
            raise FlashMistake("%s 不是固件包" % path, "%s is not a firmware bundle" % path)
        raise FlashMistake("固件包 %s 已损坏或被改动：%s" % (path, refused.zh),
                           "the bundle %s is damaged or altered: %s" % (path, refused.en))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError):
        raise FlashMistake("%s 不是固件包" % path, "%s is not a firmware bundle" % path)


def stage_firmware(bundle, kind, document, stage):
    """The bundle verified against the provisioning's release keys and unpacked as the device's slots
    will hold it, in a local directory; its manifest."""
    if not document["release_keys"]:
        raise FlashMistake("终端配置文件中没有发布公钥：先在服务器上 ykt fleet release-key-add，再登记终端",
                           "the provisioning file carries no release key: run ykt fleet release-key-add on the "
                           "server, then register the terminal")
    try:
        keys = bundles.public_keys(document["release_keys"])
    except ValueError:
        raise FlashMistake("终端配置文件中的发布公钥无效", "a release key in the provisioning file is not valid")
    try:
        return Slots(os.path.join(stage, "slots")).first_install(bundle, kind, keys)
    except bundles.BundleRefused as error:
        raise FlashMistake("固件包被拒绝：%s" % str(error).split(" / ")[0],
                           "the bundle is refused: %s" % str(error).split(" / ")[-1])


# -- terminal settings --------------------------------------------------------------------------

def terminal_config(args, kind):
    """The reader and the `ykt` options the unit adds (terminal.env), each checked to be one word."""
    options = []
    chosen = {"face": args.face, "keypad": args.keypad, "scanner": args.scanner, "beeper": args.beeper,
              "voice": args.voice, "pins": args.pins, "ble": args.ble}
    for name, value in chosen.items():
        if value is None:
            continue
        if name in KIND_OPTIONS and KIND_OPTIONS[name] != kind:
            raise FlashMistake("--%s 只用于%s" % (name, KIND_NAMES[KIND_OPTIONS[name]][0]),
                               "--%s is for a %s only" % (name, KIND_NAMES[KIND_OPTIONS[name]][1]))
        options += ["--%s" % name, str(value)]
    try:
        options += shlex.split(args.terminal_args or "")
    except ValueError as error:
        raise FlashMistake("--terminal-args 无法解析：%s" % error, "--terminal-args cannot be parsed: %s" % error)
    for word in [args.reader] + options:
        if not word or re.search(r"[\s\"'\\$%]", word):
            raise FlashMistake("设置 %r 不能含空格、引号、$ 或 %%" % word,
                               "the setting %r may not hold spaces, quotes, $ or %%" % word)
    return {"reader": args.reader, "options": options}


# -- flashing -----------------------------------------------------------------------------------

def run_flash(args, out):
    target = parse_target(args.target, args)
    if isinstance(target, tuple):
        return run_board(args, out, target[1])
    try:
        return flash_pi(args, out, target)
    finally:
        target.close()


def flash_pi(args, out, target):
    bundle_kind, bundle_version = peek_bundle(args.bundle)
    if args.kind and args.kind != bundle_kind:
        raise FlashMistake("固件包是 %s 的，不是 --kind %s" % (bundle_kind, args.kind),
                           "the bundle is for %s, not --kind %s" % (bundle_kind, args.kind))
    if not args.python.startswith("/") or re.search(r"\s", args.python):
        raise FlashMistake("--python 应为目标上的绝对路径", "--python must be an absolute path on the target")
    out.say("目标 %s，固件包 ykt-%s %s" % (target.label, bundle_kind, bundle_version),
            "target %s, bundle ykt-%s %s" % (target.label, bundle_kind, bundle_version))
    first = target.survey(read=[PROVISION_PATH, MANIFEST_PATH, SLOTS_STATE_PATH], listing=[DATA_DIR])
    previous = _json_or_none(first["contents"].get(MANIFEST_PATH))
    if previous is not None and previous.get("state") != "done":
        out.say("上次刷机未完成（已完成：%s），继续" % ("、".join(previous.get("steps_done") or []) or "无"),
                "the last flash did not finish (done: %s): carrying on" % (", ".join(previous.get("steps_done") or [])
                                                                            or "nothing"))
    provision_bytes, document = obtain_provisioning(args, out, first)
    kind = kind_of(document, bundle_kind, args.kind)
    _check_journal_owner(first, document)
    config = terminal_config(args, kind)
    with tempfile.TemporaryDirectory(prefix="ykt-flash-") as stage:
        manifest = stage_firmware(args.bundle, kind, document, stage)
        out.say("固件包已核对：签名、类型（%s）、%d 个文件的哈希" % (kind, len(manifest["files"])),
                "bundle checked: signature, kind (%s), the hashes of %d files" % (kind, len(manifest["files"])))
        steps = build_steps(stage, document, provision_bytes, config, kind, args.python)
        result = write_steps(target, out, steps, document, config, kind, manifest["version"])
    if target.root == "/":
        restart_services(target, out)
    summary(out, target, document, kind, manifest["version"], result)
    return 0


def _json_or_none(data):
    try:
        return json.loads(data) if data is not None else None
    except ValueError:
        return None


def _check_journal_owner(survey, document):
    """A journal belongs to the terminal that wrote it: a device that holds another terminal's
    identity and records is not given a new identity over them."""
    held = _json_or_none(survey["contents"].get(PROVISION_PATH))
    names = survey["listing"].get(DATA_DIR) or []
    if isinstance(held, dict) and held.get("terminal_id") not in (None, document["terminal_id"]) and names:
        raise FlashMistake("目标上是终端 %s，%s 中还有它的流水：先让它同步完，清空该目录再刷成终端 %d"
                           % (held.get("terminal_id"), DATA_DIR, document["terminal_id"]),
                           "the target is terminal %s and %s holds its journal: let it sync, empty that "
                           "directory, then flash it as terminal %d" % (held.get("terminal_id"), DATA_DIR,
                                                                        document["terminal_id"]))


def manifest_bytes(steps, document, config, kind, version, state, done, started_ms, label):
    entries = {}
    for step in steps:
        for entry in step.entries:
            entries.setdefault(entry.path, entry.listed(step.key))
    manifest = {
        "format": MANIFEST_FORMAT, "state": state, "written_by": "tools/flash.py", "target": label,
        "started_ms": started_ms, "finished_ms": int(time.time() * 1000) if state == "done" else None,
        "terminal_id": document["terminal_id"], "merchant_id": document["merchant_id"],
        "category": document["category"], "key_version": document.get("key_version"),
        "server_url": document["server_url"], "kind": kind, "version": version, "config": config,
        "steps": [step.key for step in steps], "steps_done": list(done), "trees": [tree for step in steps
                                                                                   for tree in step.trees],
        "entries": entries,
    }
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")


def write_steps(target, out, steps, document, config, kind, version):
    """Compare, write what differs step by step (the manifest records each step done), read back."""
    started_ms = int(time.time() * 1000)
    wanted = {entry.path for step in steps for entry in step.entries}
    trees = [tree for step in steps for tree in step.trees]
    paths = sorted(path for path in wanted if not any(path.startswith(tree + "/") for tree in trees))
    before = target.survey(paths=paths, trees=trees, read=[SLOTS_STATE_PATH])

    def manifest_entry(state, done):
        data = manifest_bytes(steps, document, config, kind, version, state, done, started_ms, target.label)
        return Entry(MANIFEST_PATH, "file", 0o600, data=data)

    plan = [{"remove": [], "entries": [Entry(OPT_DIR, "dir", 0o755), manifest_entry("flashing", [])]}]
    counts = []
    seen = set()
    for number, step in enumerate(steps):
        own = [entry for entry in step.entries if entry.path not in seen]     # a directory two steps share
        seen.update(entry.path for entry in own)
        changed = [entry for entry in own if _differs(entry, before, version, kind)]
        removed = extras(before, step.trees, wanted)
        if step is steps[-1] and any(count[0] or count[2] for count in counts):
            # something is mended: the boot links go first and come back last, so a device this run
            # leaves half flashed never starts a terminal that is not all there
            links = [entry for entry in own if entry.type == "link"]
            plan[0]["remove"] += [entry.path for entry in links if entry.path in before["entries"]]
            changed = [entry for entry in own if entry.type == "link" or entry in changed]
        counts.append((len(changed), len(own) - len(changed), len(removed)))
        done = [done_step.key for done_step in steps[:number + 1]]
        plan.append({"remove": removed, "entries": changed + [manifest_entry("flashing", done)]})

    def on_answer(answer):
        if "error" in answer:
            return
        number = answer["step"]
        if number == 0:
            return
        step = steps[number - 1]
        written, kept, removed = counts[number - 1]
        if written == 0 and removed == 0:
            out.say("[%d/%d] %s：%d 项已核对一致，跳过" % (number, len(steps), step.zh, kept),
                    "[%d/%d] %s: %d already right, skipped" % (number, len(steps), step.en, kept))
        else:
            out.say("[%d/%d] %s：写入 %d 项，%d 项已一致%s" % (number, len(steps), step.zh, written, kept,
                                                        "，删除 %d 项多余的" % removed if removed else ""),
                    "[%d/%d] %s: wrote %d, %d already right%s" % (number, len(steps), step.en, written, kept,
                                                               ", removed %d stray" % removed if removed else ""))

    request = {"op": "apply", "steps": [{"remove": item["remove"], "entries": [entry.meta() for entry in
                                                                                 item["entries"]]} for item in plan]}
    payload = (chunk for item in plan for entry in item["entries"] if entry.type == "file"
               for chunk in entry.chunks())
    answers = target.call(request, payload, on_answer)
    failed = [answer["error"] for answer in answers if "error" in answer]
    if failed or len(answers) != len(plan):
        raise half_flashed(failed[0] if failed else None, steps, answers)
    out.say("读回核对…", "reading everything back...")
    after = target.survey(paths=paths, trees=trees, read=[SLOTS_STATE_PATH])
    problems = compare(steps, after, version, kind, trees, wanted)
    if problems:
        raise TargetProblem("写入后读回不一致（%d 处），设备只刷了一半：%s。请再运行一次" % (
            len(problems), "；".join("%s %s" % (path, zh) for path, zh, _en in problems[:5])),
            "read back differs after writing (%d), the device is half flashed: %s. Run the flash again" % (
            len(problems), "; ".join("%s %s" % (path, en) for path, _zh, en in problems[:5])))
    final = manifest_entry("done", [step.key for step in steps])
    answers = target.call({"op": "apply", "steps": [{"remove": [], "entries": [final.meta()]}]}, final.chunks())
    if [answer.get("written") for answer in answers] != [1]:
        raise half_flashed(answers[0].get("error") if answers else None, steps, [])
    files = sum(1 for step in steps for entry in step.entries if entry.type == "file")
    return {"counts": counts, "checked": len(wanted), "files": files,
            "written": sum(count[0] for count in counts), "removed": sum(count[2] for count in counts)}


def _differs(entry, survey, version, kind):
    found = survey["entries"].get(entry.path)
    if entry.runtime:     # a fresh install's state is kept as it is: it carries the install's time
        return found is None or not state_matches(survey["contents"].get(entry.path, b""), version, kind)
    return entry_problem(entry.path, entry.listed(None), found, survey["contents"], version, kind) is not None


def compare(steps, survey, version, kind, trees, wanted):
    problems = []
    for step in steps:
        for entry in step.entries:
            if _differs(entry, survey, version, kind):
                zh, en = entry_problem(entry.path, entry.listed(None), survey["entries"].get(entry.path),
                                       survey["contents"], version, kind) or ("不是新装状态", "not a fresh install")
                problems.append((entry.path, zh, en))
    problems += [(path, "多余", "stray") for path in extras(survey, trees, wanted)]
    return problems


def half_flashed(error, steps, answers):
    done = [steps[answer["step"] - 1] for answer in answers if "step" in answer and answer["step"] > 0]
    done_zh = "、".join(step.zh for step in done) or "无"
    done_en = ", ".join(step.en for step in done) or "nothing"
    if error is None:
        return TargetProblem("刷机中断（已完成：%s），设备只刷了一半：请再运行一次" % done_zh,
                             "the flash was cut off (done: %s); the device is half flashed: run it again" % done_en)
    number = error["step"]
    step_zh, step_en = (steps[number - 1].zh, steps[number - 1].en) if number > 0 else ("开始", "start")
    return TargetProblem(
        "第 %d 步（%s）写入 %s 失败：%s。设备只刷了一半（已完成：%s），不要装机；排除问题后再运行一次，已写好的会跳过"
        % (number, step_zh, error["path"], error["strerror"], done_zh),
        "step %d (%s) failed writing %s: %s. The device is half flashed (done: %s) and must not go into service; "
        "fix the cause and run the flash again: what is right is skipped" % (number, step_en, error["path"],
                                                                          error["strerror"], done_en))


def restart_services(target, out):
    """On a running Pi the units are new or changed: systemd reads them again and the terminal
    restarts on what was flashed."""
    code, text = target.shell("systemctl daemon-reload && systemctl restart ykt-clock.service "
                              "ykt-clock-save.timer %s" % TERMINAL_UNIT)
    if code == 0:
        out.say("已重新启动终端服务 %s" % TERMINAL_UNIT, "restarted %s" % TERMINAL_UNIT)
    else:
        out.say("注意：未能重启服务（%s），请重启设备" % _last_line(text),
                "warning: could not restart the services (%s): reboot the device" % _last_line(text))


def summary(out, target, document, kind, version, result):
    name_zh, name_en = KIND_NAMES[kind]
    merchant = document.get("merchant_name_zh") or ""
    out.say("刷机完成：%s %d（商户 %d %s），固件 ykt-%s %s" % (name_zh, document["terminal_id"],
                                                      document["merchant_id"], merchant, kind, version),
            "flashed: %s %d (merchant %d %s), firmware ykt-%s %s" % (name_en, document["terminal_id"],
                                                                  document["merchant_id"],
                                                                  document.get("merchant_name_en") or "", kind,
                                                                  version))
    out.say("  目标 %s；写入 %d 项，删除 %d 项，读回核对 %d 项（含 %d 个文件的 SHA-256），全部一致"
            % (target.label, result["written"], result["removed"], result["checked"], result["files"]),
            "  target %s; wrote %d, removed %d, read back %d (the SHA-256 of %d files): all match"
            % (target.label, result["written"], result["removed"], result["checked"], result["files"]))
    out.say("  开机即运行 %s；服务器 %s；清单 %s" % (TERMINAL_UNIT, document["server_url"], MANIFEST_PATH),
            "  %s starts at boot; server %s; manifest %s" % (TERMINAL_UNIT, document["server_url"], MANIFEST_PATH))


# -- verify -------------------------------------------------------------------------------------

def run_verify(args, out):
    target = parse_target(args.target, args)
    if isinstance(target, tuple):
        raise FlashMistake("开发板请再运行一次刷机：它逐个核对文件哈希，只补写不一致的",
                           "for a board, run the flash again: it checks every file's hash and writes only what "
                           "differs")
    try:
        return verify_pi(out, target)
    finally:
        target.close()


def verify_pi(out, target):
    first = target.survey(read=[MANIFEST_PATH])
    manifest = _json_or_none(first["contents"].get(MANIFEST_PATH))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise TargetProblem("%s 上没有刷机清单 %s：没有刷过机，或刷机在第一步前就中断了" % (target.label, MANIFEST_PATH),
                            "no flash manifest %s on %s: never flashed, or the flash stopped before its first "
                            "step" % (MANIFEST_PATH, target.label))
    entries, trees = manifest["entries"], manifest["trees"]
    paths = sorted(path for path in entries if not any(path.startswith(tree + "/") for tree in trees))
    survey = target.survey(paths=paths, trees=trees, read=[SLOTS_STATE_PATH])
    state = _json_or_none(survey["contents"].get(SLOTS_STATE_PATH)) or {}
    updated = isinstance(state, dict) and state.get("version") not in (None, manifest["version"])
    problems = []
    skipped = 0
    for path, expected in sorted(entries.items()):
        if updated and path.startswith(SLOTS_DIR + "/") and not expected.get("runtime"):
            skipped += 1         # an update through sync has replaced the slots since the flash
            continue
        problem = entry_problem(path, expected, survey["entries"].get(path), survey["contents"],
                                manifest["version"], manifest["kind"])
        if problem is not None:
            problems.append((path,) + problem)
    if not updated:
        problems += [(path, "多余", "stray") for path in extras(survey, [SLOTS_DIR], set(entries))]
    problems += [(path, "多余", "stray") for path in extras(survey, [SUPERVISOR_DIR], set(entries))]
    for path, zh, en in problems:
        out.say("  %s：%s" % (path, zh), "  %s: %s" % (path, en))
    kind = manifest["kind"]
    out.say("%s %s：%s %s，固件 %s" % (target.label, MANIFEST_PATH, KIND_NAMES[kind][0], manifest["terminal_id"],
                                  manifest["version"]),
            "%s %s: %s %s, firmware %s" % (target.label, MANIFEST_PATH, KIND_NAMES[kind][1], manifest["terminal_id"],
                                          manifest["version"]))
    if updated:
        out.say("  固件已经由同步升级到 %s，槽内文件不再与刷机时比较" % state.get("version"),
                "  the firmware was updated through sync to %s since: the slots are not compared"
                % state.get("version"))
    if manifest["state"] != "done":
        left = [key for key in manifest["steps"] if key not in manifest["steps_done"]]
        raise TargetProblem("刷机未完成：还差 %s；发现 %d 处不一致。请再运行一次刷机" % ("、".join(left), len(problems)),
                            "the flash did not finish: %s left; %d differences. Run the flash again"
                            % (", ".join(left), len(problems)))
    if problems:
        raise TargetProblem("核对 %d 项，%d 处与刷机清单不符：请再运行一次刷机修复" % (len(entries), len(problems)),
                            "checked %d, %d differ from the flash manifest: run the flash again to mend them"
                            % (len(entries), len(problems)))
    out.say("核对 %d 项：全部与刷机清单一致" % (len(entries) - skipped),
            "checked %d: all match the flash manifest" % (len(entries) - skipped))
    return 0


# -- the ESP32 board ----------------------------------------------------------------------------

def run_board(args, out, port):
    """A water dispenser on a MicroPython board: the provisioning as for a Pi, the copying and
    checking by tools/flash_board.py (mpremote)."""
    try:
        import flash_board
    except ModuleNotFoundError as error:
        if error.name != "flash_board":
            raise
        raise FlashMistake("这里没有开发板刷机模块 tools/flash_board.py", "board flashing (tools/flash_board.py) is "
                                                                          "not available here")
    settings = {}
    for text in args.setting:
        try:
            key, value = flash_board.parse_setting(text)
        except ValueError:
            raise FlashMistake("--setting 应为 键=值，值为整数或 true/false：%r" % text,
                               "--setting takes KEY=VALUE, the value a whole number or true/false: %r" % text)
        settings[key] = value
    _provision_bytes, document = obtain_provisioning(args, out)
    kind_of(document, "dispenser", args.kind)
    try:
        written = flash_board.flash_board(port, document, settings, progress=lambda line: print(line, flush=True))
    except flash_board.FlashError as error:
        raise FlashMistake(error.zh, error.en)
    out.say("刷机完成：开水机 %d，开发板 %s，%d 个文件已核对" % (document["terminal_id"], port, len(written)),
            "flashed: water dispenser %d, board %s, %d files checked" % (document["terminal_id"], port, len(written)))
    return 0


# -- command line -------------------------------------------------------------------------------

EPILOG = """示例 / examples:
  SD 卡（根分区挂载在 /media/sd/rootfs）/ an SD card's root partition mounted at /media/sd/rootfs:
    python tools/flash.py flash --target dir:/media/sd/rootfs --bundle dist/ykt-pos-1.3.0.zip \\
        --provision terminal-12.json --reader pn532:/dev/ttyS0 --face 8800 --keypad evdev:/dev/input/event0
  运行中的 Pi，在服务器上登记 / a running Pi, registered on the server (password: prompt or $YKT_ADMIN_PASSWORD):
    python tools/flash.py flash --target ssh://pi@10.0.0.5 --bundle dist/ykt-activation-1.3.0.zip \\
        --server https://ykt.example.edu --user tech --merchant 4 --location "图书馆一楼"
  开发板上的开水机 / a water dispenser on an ESP32 board:
    python tools/flash.py flash --target board:/dev/ttyUSB0 --provision water-9.json --setting price_fen_per_litre=30
  核对 / check a device against what was flashed:
    python tools/flash.py verify --target ssh://pi@10.0.0.5

刷了一半（断电、拔卡、网络断开）：再运行同一条命令，已写好的会核对后跳过。
A half flash (power cut, card pulled, network gone): run the same command again; what is right is skipped.
退出码 / exit codes: 0 完成 done; 2 输入错误或被拒绝 a mistake or refusal; 3 设备与应有的不符（半刷机）the device is
not as it should be (half flashed): run the flash again.
"""


def _target_options(parser):
    parser.add_argument("--target", required=True,
                        help="dir:/PATH (an SD card's root, mounted), ssh://[USER@]HOST[:PORT][/ROOT] (a running "
                             "Pi; ROOT for a root that is not /), or board:PORT (an ESP32 dispenser, mpremote)")
    parser.add_argument("--identity", help="ssh: the private key file (default: your ssh keys and agent)")
    parser.add_argument("--ssh-option", action="append", default=[], metavar="OPTION=VALUE",
                        help="ssh: an -o option, e.g. UserKnownHostsFile=known_hosts (repeatable)")
    parser.add_argument("--remote-python", default="python3", help="ssh: the Pi's Python for the copying "
                                                                   "(default python3)")
    parser.add_argument("--lang", choices=("zh", "en"), default=os.environ.get("YKT_LANG", "zh"),
                        help="language of the progress lines (default $YKT_LANG, else zh)")


def build_parser():
    parser = argparse.ArgumentParser(prog="tools/flash.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)
    flash = commands.add_parser(
        "flash", help="刷机 / flash a terminal", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="写入终端身份与密钥、设置、固件（A/B 槽）和开机服务，读回核对 / write the terminal's identity and "
                    "keys, settings, firmware (A/B slots) and boot services, then read them back", epilog=EPILOG)
    _target_options(flash)
    flash.add_argument("--bundle", help="the signed firmware bundle (tools/release.py build); not for board:")
    flash.add_argument("--kind", choices=tuple(COMMAND_OF_KIND), help="refuse unless the terminal is of this kind "
                                                                       "(default: the bundle's)")
    source = flash.add_argument_group("provisioning (one of)")
    source.add_argument("--provision", help="the provisioning JSON (ykt hall terminal-register --out)")
    source.add_argument("--server", help="register a new terminal on this server (its admin pages)")
    source.add_argument("--user", help="--server: a staff user with the admin role")
    source.add_argument("--merchant", type=int, help="--server: the merchant the terminal belongs to")
    source.add_argument("--location", help="--server: where the terminal stands")
    pi = flash.add_argument_group("Raspberry Pi settings (terminal.env)")
    pi.add_argument("--reader", default="pn532:/dev/ttyS0", help="reader URL (default pn532:/dev/ttyS0)")
    pi.add_argument("--face", type=int, metavar="PORT", help="serve the kiosk screen on this port")
    pi.add_argument("--keypad", help="POS: the cashier's keypad, evdev:/dev/input/...")
    pi.add_argument("--scanner", help="POS: the payment-code scanner, serial:/dev/ttyACM0 or evdev:...")
    pi.add_argument("--beeper", help="the buzzer's pin, e.g. GPIO18")
    pi.add_argument("--voice", help="aplay or off (the activation unit speaks by default)")
    pi.add_argument("--pins", choices=("gpio", "mock"), help="dispenser: valve and meter pins")
    pi.add_argument("--ble", help="dispenser: Bluetooth LE transport, e.g. hci-socket:0")
    pi.add_argument("--terminal-args", metavar='"--OPTION VALUE ..."',
                    help='more options for the ykt command, e.g. --terminal-args="--sync-interval-ms 5000"')
    pi.add_argument("--python", default=DEFAULT_PYTHON,
                    help="the Python on the Pi that runs the terminal (default %s, the image's venv)" % DEFAULT_PYTHON)
    flash.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                       help="board: a setting of dispenser.json, e.g. price_fen_per_litre=30 (repeatable)")
    flash.set_defaults(handler=run_flash)
    verify = commands.add_parser(
        "verify", help="核对设备与刷机清单 / check a device against its flash manifest",
        description="读回设备上的每个文件，与刷机清单比较哈希和权限 / read every file back and compare its hash and "
                    "mode with the flash manifest", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG)
    _target_options(verify)
    verify.set_defaults(handler=run_verify)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Out(args.lang)
    try:
        return args.handler(args, out)
    except FlashMistake as error:
        print("%s / %s" % (error.zh, error.en), file=sys.stderr, flush=True)
        return EXIT_MISTAKE
    except TargetProblem as error:
        print("%s / %s" % (error.zh, error.en), file=sys.stderr, flush=True)
        return EXIT_NOT_AS_FLASHED
    except KeyboardInterrupt:
        print("已中断：设备可能只刷了一半，请再运行一次 / interrupted: the device may be half flashed, run the flash again",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
