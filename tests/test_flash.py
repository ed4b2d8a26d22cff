"""tools/flash.py, the technicians' flashing tool, on a Raspberry Pi's root as a directory and over a
real sshd: a release key and bundle made by tools/release.py as processes, terminals registered on
the real server process (through its admin pages, and by `ykt hall terminal-register`), the flash and
verify runs as processes. A flashed root holds its identity 0600 in a 0700 directory, its firmware in
the A/B slots, units systemd itself calls enabled, and a manifest whose hashes are the files'; the
terminal started from its own unit's command line (paths under the test's root) journals a tap that
reaches the server and tells systemd READY and WATCHDOG. A flash stopped half-way says where; a
second run finishes it; a changed byte is found by verify and mended by a run; a tampered bundle is
refused with nothing activated; mistakes are one bilingual line and exit 2. No run prints a key.
"""
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile

import pytest

from firmware.apps import bundles
from firmware.apps.slots import Slots
from firmware.core import wallets
from sync_server import registry
from sync_server.web import auth

from field_cards import card_image
from server_process import free_port, running_server
from staff_site import PASSWORD
from test_virtual_board import until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLASH = os.path.join(ROOT, "tools", "flash.py")
RELEASE = os.path.join(ROOT, "tools", "release.py")
DEADLINE_S = 90          # how long to wait for something before failing, not a performance bound
UID = bytes.fromhex("f1a5f1a5")
DEVICE_PREFIXES = ("/etc/ykt", "/var/lib/ykt", "/opt/ykt")


class Site:
    """The module's server (SQLite), release key, bundles, a canteen and a water merchant, and every
    output of every tool run (checked for keys)."""

    outputs = []
    secrets = set()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("flash")
    with running_server(base / "server", database=None) as server:
        key_file = str(base / "release.key")
        made = subprocess.run([sys.executable, RELEASE, "keygen", "--out", key_file], capture_output=True, text=True,
                              timeout=60)
        assert made.returncode == 0, made.stderr
        public = made.stdout.strip()
        assert server.ykt("fleet", "release-key-add", "--key", public).returncode == 0
        built = subprocess.run([sys.executable, RELEASE, "build", "--kind", "pos", "--version", "1.2.0", "--key",
                                key_file, "--out", str(base / "dist")], capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stderr
        conn = server.connect()
        try:
            auth.add_staff_user(conn, "tech", "李技术", ["admin"], PASSWORD)
            canteen = registry.add_merchant(conn, "一食堂", "canteen 1", wallets.CATEGORY_CANTEEN)
            water = registry.add_merchant(conn, "开水房", "boiler room", wallets.CATEGORY_WATER)
        finally:
            conn.close()
        with open(key_file, "rb") as handle:
            Site.secrets.add(handle.read().hex())
        site = Site()
        site.server, site.base, site.public = server, base, public
        site.bundle = str(base / "dist" / "ykt-pos-1.2.0.zip")
        site.canteen, site.water = canteen, water
        yield site
    assert_no_key_printed()


def assert_no_key_printed():
    for output in Site.outputs:
        for secret in Site.secrets:
            assert secret not in output.lower(), "a key was printed"


def learn_keys(document):
    Site.secrets.update(value.lower() for value in document["sam_keys"].values())


def flash(*args, env=None, **popen):
    """tools/flash.py as a process; its output kept for the key check."""
    done = subprocess.run([sys.executable, FLASH, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})), **popen)
    Site.outputs.append(done.stdout + done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def registered(site, tmp_path, merchant=None, name="till.json"):
    """A terminal registered at the desk (`ykt hall terminal-register --out`): its file and document."""
    path = str(tmp_path / name)
    done = site.server.ykt("hall", "terminal-register", "--merchant", str(merchant or site.canteen), "--out", path)
    assert done.returncode == 0, done.stderr
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    learn_keys(document)
    return path, document


def on(root, path):
    return os.path.join(str(root), path.lstrip("/"))


def mode(root, path):
    return os.lstat(on(root, path)).st_mode & 0o7777


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def unit(root, name):
    """{section: [(key, value)]} of an installed unit file."""
    sections, current = {}, None
    with open(on(root, "/etc/systemd/system/" + name), encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            key, _sep, value = line.partition("=")
            current.append((key, value))
    return sections


def value_of(section, key):
    (value,) = [value for name, value in section if name == key]
    return value


def environment_file(root, path):
    found = {}
    with open(on(root, path), encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _sep, value = line.partition("=")
                found[key] = value[1:-1] if value.startswith('"') else value
    return found


def under_root(root, word):
    """A device path of the terminal's own moved under the test's root."""
    return on(root, word) if word.startswith(DEVICE_PREFIXES) else word


def service_command(root):
    """(argv, environment, working directory) of ykt-terminal.service as systemd would run it, with the
    device's paths under `root` and this interpreter in place of the image's."""
    service = unit(root, "ykt-terminal.service")["Service"]
    settings = environment_file(root, value_of(service, "EnvironmentFile"))
    argv = []
    for word in shlex.split(value_of(service, "ExecStart")):
        if word.startswith("${") and word.endswith("}"):
            argv.append(settings[word[2:-1]])            # ${X}: one word
        elif word.startswith("$"):
            argv.extend(settings[word[1:]].split())      # $X: split at white space
        else:
            argv.append(under_root(root, word))
    argv[0] = sys.executable
    environment = {}
    for assignment in shlex.split(value_of(service, "Environment")):
        name, _sep, text = assignment.partition("=")
        environment[name] = under_root(root, text)
    return argv, environment, under_root(root, value_of(service, "WorkingDirectory"))


def one_bilingual_line(done, *words):
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and " / " in lines[0], done.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_a_terminal_registered_on_the_server_and_flashed_boots_into_the_terminal(site, tmp_path):
    server = site.server
    root = tmp_path / "root"
    root.mkdir()
    args = ["flash", "--target", "dir:%s" % root, "--bundle", site.bundle, "--server", server.url, "--user", "tech",
            "--merchant", str(site.canteen), "--location", "一食堂二楼东", "--reader", "sim:",
            "--terminal-args=--sync-interval-ms 500"]
    done = flash(*args, env={"YKT_ADMIN_PASSWORD": PASSWORD})
    assert done.returncode == 0, done.stderr
    with open(on(root, "/etc/ykt/terminal.json"), encoding="utf-8") as handle:
        document = json.load(handle)
    learn_keys(document)
    terminal_id = document["terminal_id"]
    assert server.query("SELECT merchant_id, location, status FROM terminals WHERE id = ?", (terminal_id,)) == \
        [(site.canteen, "一食堂二楼东", "active")]
    assert document["release_keys"] == [site.public]
    assert "刷机完成" in done.stdout and "全部一致" in done.stdout

    # what is where, and who may read it
    assert (mode(root, "/etc/ykt"), mode(root, "/etc/ykt/terminal.json"), mode(root, "/etc/ykt/terminal.env")) == \
        (0o700, 0o600, 0o600)
    assert (mode(root, "/var/lib/ykt"), mode(root, "/var/lib/ykt/data")) == (0o700, 0o700)
    assert os.listdir(on(root, "/var/lib/ykt/data")) == []
    with open(on(root, "/var/lib/ykt/slots/state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    assert (state["active"], state["version"], state["kind"], state["trial"]) == ("a", "1.2.0", "pos", None)
    with zipfile.ZipFile(site.bundle) as archive:
        listed = json.loads(archive.read("manifest.json"))["files"]
    for relative, entry in listed.items():
        for copy in ("/var/lib/ykt/slots/a/", "/opt/ykt/supervisor/"):
            assert sha256(on(root, copy + relative)) == entry["sha256"], relative

    # the units: the supervisor in the slots, restarted, watched, after the clock; enabled offline
    service = unit(root, "ykt-terminal.service")
    assert value_of(service["Service"], "Type") == "notify"
    assert value_of(service["Service"], "Restart") == "always"
    assert int(value_of(service["Service"], "WatchdogSec")) > 0
    assert value_of(service["Service"], "StateDirectory") == "ykt"
    assert value_of(service["Service"], "ProtectSystem") == "strict"
    assert "time-sync.target" in value_of(service["Unit"], "After")
    assert "ykt-clock.service" in value_of(service["Unit"], "After")
    exec_start = shlex.split(value_of(service["Service"], "ExecStart"))
    assert exec_start[1:9] == ["-m", "firmware.apps.slots", "--root", "/var/lib/ykt/slots", "--data-dir",
                               "/var/lib/ykt/data", "--", "terminal"]
    assert "/etc/ykt/terminal.json" in exec_start and "--serve" in exec_start
    clock = unit(root, "ykt-clock.service")
    assert value_of(clock["Service"], "ExecStart") == "/opt/ykt/bin/ykt-clock restore /var/lib/ykt/clock"
    assert value_of(clock["Service"], "ExecStop") == "/opt/ykt/bin/ykt-clock save /var/lib/ykt/clock"
    wants = {"multi-user.target.wants/ykt-terminal.service", "sysinit.target.wants/ykt-clock.service",
             "timers.target.wants/ykt-clock-save.timer"}
    for link in wants:
        assert os.readlink(on(root, "/etc/systemd/system/" + link)) == "/etc/systemd/system/" + link.split("/")[1]
    if shutil.which("systemctl"):
        enabled = subprocess.run(["systemctl", "--root", str(root), "is-enabled", "ykt-terminal.service",
                                  "ykt-clock.service", "ykt-clock-save.timer"], capture_output=True, text=True)
        assert enabled.stdout.split() == ["enabled"] * 3, enabled.stdout + enabled.stderr
    if shutil.which("systemd-analyze"):
        checked = subprocess.run(["systemd-analyze", "verify", "--root", str(root), "ykt-terminal.service",
                                  "ykt-clock.service", "ykt-clock-save.service", "ykt-clock-save.timer"],
                                 capture_output=True, text=True)
        complaints = [line for line in checked.stderr.splitlines()
                      if "not found" not in line and "is not executable" not in line]
        assert complaints == [], checked.stderr     # a bare root lacks the system's targets and the venv

    # the manifest: every file's hash as it is on the device
    with open(on(root, "/opt/ykt/flash-manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert manifest["state"] == "done" and manifest["steps_done"] == manifest["steps"]
    assert mode(root, "/opt/ykt/flash-manifest.json") == 0o600
    hashed = {path: line for path, line in manifest["entries"].items() if line["type"] == "file" and line["sha256"]}
    assert len(hashed) > 500
    for path, line in hashed.items():
        assert sha256(on(root, path)) == line["sha256"] and mode(root, path) == line["mode"], path

    # the terminal as its unit starts it: a tap journaled, uploaded, and systemd told it is alive
    conn = server.connect()
    try:
        _person, account_id = registry.add_person(conn, "刷机", 2, staff_number="F0001")
        registry.recharge(conn, account_id, 5000)
        identity, _name = registry.issue_card_record(conn, account_id, UID)
    finally:
        conn.close()
    card = card_image(server.master_key(), identity, "刷机", UID, tmp_path / "card.card")
    argv, environment, cwd = service_command(root)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000", **environment)
    log_path = tmp_path / "terminal.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv + ["--script", "-"], stdin=subprocess.PIPE, stdout=log,
                                   stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    heard = set()
    try:
        process.stdin.write(json.dumps({"sync": True}) + "\n" + json.dumps({"amount_fen": 700, "card": card}) + "\n")
        process.stdin.close()

        def told_and_uploaded():
            try:
                heard.update(notify.recv(4096).decode().splitlines())
            except socket.timeout:
                pass
            return {"READY=1", "WATCHDOG=1"} <= heard and \
                server.query("SELECT seq FROM terminal_records WHERE terminal_id = ?", (terminal_id,)) == [(1,)]
        until("the tap on the server and systemd told (%s)" % log_path, told_and_uploaded, DEADLINE_S)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=DEADLINE_S)
        notify.close()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    Site.outputs.append(output)
    assert process.returncode == 0, output
    conn = server.connect()
    try:
        assert registry.balances_of(conn, account_id)["main"] == 5000 - 700
    finally:
        conn.close()
    assert os.listdir(on(root, "/var/lib/ykt/data"))             # the journal is where the unit says

    # again, as a technician unsure it went through: the identity kept, nothing registered, all verified
    count = server.query("SELECT count(*) FROM terminals")
    again = flash(*args, env={"YKT_ADMIN_PASSWORD": PASSWORD})
    assert again.returncode == 0, again.stderr
    assert "沿用" in again.stdout and "写入 0 项" in again.stdout
    assert server.query("SELECT count(*) FROM terminals") == count
    checked = flash("verify", "--target", str(root), "--lang", "en")
    assert checked.returncode == 0 and "all match" in checked.stdout, checked.stdout + checked.stderr
    assert_no_key_printed()


def test_a_half_flash_says_where_it_stopped_and_a_second_run_finishes_it(site, tmp_path):
    provision, _document = registered(site, tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    args = ["flash", "--target", str(root), "--bundle", site.bundle, "--provision", provision, "--reader",
            "pn532:/dev/ttyS0", "--face", "8800"]
    # a directory where the terminal's unit goes: the fifth step cannot write it
    blocker = on(root, "/etc/systemd/system/ykt-terminal.service")
    os.makedirs(blocker)
    with open(os.path.join(blocker, "notes.txt"), "w") as handle:
        handle.write("left here\n")
    stopped = flash(*args)
    assert stopped.returncode == 3
    one_bilingual_line(stopped, "第 5 步", "/etc/systemd/system/ykt-terminal.service", "半", "half flashed")
    assert "[4/6]" in stopped.stdout and "[5/6]" not in stopped.stdout
    assert not os.path.lexists(on(root, "/etc/systemd/system/multi-user.target.wants/ykt-terminal.service"))
    half = flash("verify", "--target", str(root))
    assert half.returncode == 3 and "刷机未完成" in half.stderr, half.stdout + half.stderr
    shutil.rmtree(blocker)
    finished = flash(*args)
    assert finished.returncode == 0, finished.stderr
    assert "上次刷机未完成" in finished.stdout
    assert "[3/6] 固件槽 a：" in finished.stdout and "已核对一致，跳过" in finished.stdout
    assert flash("verify", "--target", str(root)).returncode == 0

    # a byte changed in the firmware, a stray file in a slot, the identity's mode loosened: found, mended
    changed = on(root, "/var/lib/ykt/slots/a/firmware/core/pos.py")
    with open(changed, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0x01]))
    with open(on(root, "/opt/ykt/supervisor/firmware/apps/stray.py"), "w") as handle:
        handle.write("print('not from the bundle')\n")
    os.chmod(on(root, "/etc/ykt/terminal.json"), 0o644)
    found = flash("verify", "--target", str(root), "--lang", "en")
    assert found.returncode == 3
    assert "/var/lib/ykt/slots/a/firmware/core/pos.py: changed" in found.stdout
    assert "/opt/ykt/supervisor/firmware/apps/stray.py: stray" in found.stdout
    assert "/etc/ykt/terminal.json: mode 644, should be 600" in found.stdout
    one_bilingual_line(found, "3 处", "3 differ")
    mended = flash(*args, "--lang", "en")
    assert mended.returncode == 0, mended.stderr
    assert "identity and keys: wrote 1" in mended.stdout and "removed 1 stray" in mended.stdout
    assert flash("verify", "--target", str(root)).returncode == 0
    assert mode(root, "/etc/ykt/terminal.json") == 0o600

    # a flashed card mended again and stopped half-way no longer boots into the terminal
    timer = on(root, "/etc/systemd/system/ykt-clock-save.timer")
    os.remove(timer)
    os.makedirs(os.path.join(timer, "blocker"))
    assert flash(*args).returncode == 3
    link = on(root, "/etc/systemd/system/multi-user.target.wants/ykt-terminal.service")
    assert not os.path.lexists(link)
    shutil.rmtree(timer)
    assert flash(*args).returncode == 0 and os.path.islink(link)

    # cut off outright after its first step: the next run finishes whatever was left
    os.remove(on(root, "/opt/ykt/bin/ykt-clock"))
    shutil.rmtree(on(root, "/var/lib/ykt/slots"))
    cut = subprocess.Popen([sys.executable, FLASH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(os.environ, TMPDIR=str(tmp_path)))     # its staging left behind: here
    for line in cut.stdout:
        Site.outputs.append(line)
        if line.startswith("[1/6]"):
            cut.kill()
            break
    Site.outputs.append(cut.stdout.read())
    cut.wait()
    after = flash(*args)
    assert after.returncode == 0, after.stderr
    assert flash("verify", "--target", str(root)).returncode == 0
    assert_no_key_printed()


def test_a_tampered_bundle_is_refused_and_nothing_is_activated(site, tmp_path):
    provision, _document = registered(site, tmp_path)
    tampered = str(tmp_path / "tampered.zip")
    with zipfile.ZipFile(site.bundle) as source, zipfile.ZipFile(tampered, "w") as copy:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "files/firmware/core/pos.py":
                data = data[:100] + bytes([data[100] ^ 0x20]) + data[101:]
            copy.writestr(info, data)
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = flash("flash", "--target", str(empty), "--bundle", tampered, "--provision", provision)
    assert refused.returncode == 2
    one_bilingual_line(refused, "firmware/core/pos.py", "不符", "does not match")
    assert os.listdir(empty) == []

    # on a flashed device: signed by a stranger, or altered, the slots and their state stay as they were
    root = tmp_path / "root"
    root.mkdir()
    assert flash("flash", "--target", str(root), "--bundle", site.bundle, "--provision", provision).returncode == 0
    state = on(root, "/var/lib/ykt/slots/state.json")
    with open(state, "rb") as handle:
        state_before = handle.read()
    stranger_key = str(tmp_path / "stranger.key")
    made = subprocess.run([sys.executable, RELEASE, "keygen", "--out", stranger_key], capture_output=True)
    assert made.returncode == 0
    stranger = subprocess.run([sys.executable, RELEASE, "build", "--kind", "pos", "--version", "1.2.1", "--key",
                               stranger_key, "--out", str(tmp_path / "stranger")], capture_output=True, text=True)
    assert stranger.returncode == 0, stranger.stderr
    for bundle, words in ((tampered, ("不符",)), (str(tmp_path / "stranger" / "ykt-pos-1.2.1.zip"), ("签名",))):
        done = flash("flash", "--target", str(root), "--bundle", bundle, "--provision", provision)
        assert done.returncode == 2
        one_bilingual_line(done, *words)
        with open(state, "rb") as handle:
            assert handle.read() == state_before
    assert flash("verify", "--target", str(root)).returncode == 0

    # an update through sync since the flash is no difference: the slots are then the terminal's own
    newer = subprocess.run([sys.executable, RELEASE, "build", "--kind", "pos", "--version", "1.3.0", "--key",
                            str(site.base / "release.key"), "--out", str(tmp_path / "newer")], capture_output=True)
    assert newer.returncode == 0
    Slots(on(root, "/var/lib/ykt/slots")).install(str(tmp_path / "newer" / "ykt-pos-1.3.0.zip"),
                                                  bundles.public_keys([site.public]))
    updated = flash("verify", "--target", str(root), "--lang", "en")
    assert updated.returncode == 0 and "updated through sync to 1.3.0" in updated.stdout, updated.stdout
    assert_no_key_printed()


def test_mistakes_are_one_bilingual_line_and_exit_2(site, tmp_path):
    provision, _document = registered(site, tmp_path)
    water, _water_document = registered(site, tmp_path, merchant=site.water, name="water.json")
    root = tmp_path / "root"
    root.mkdir()
    cases = [
        (["--target", str(root), "--bundle", str(tmp_path / "none.zip"), "--provision", provision],
         ("找不到固件包", "no bundle")),
        (["--target", str(root), "--bundle", site.bundle, "--provision", water], ("开水机", "water dispenser")),
        (["--target", str(root), "--bundle", site.bundle, "--provision", provision, "--ble", "hci-socket:0"],
         ("--ble",)),
        (["--target", "ftp://10.0.0.5/", "--bundle", site.bundle, "--provision", provision], ("无效的目标",)),
        (["--target", str(tmp_path / "no-such-card"), "--bundle", site.bundle, "--provision", provision],
         ("不存在",)),
        (["--target", "ssh://root@127.0.0.1:%d/x" % free_port(), "--bundle", site.bundle, "--provision", provision],
         ("无法连接", "cannot reach")),
        (["--target", str(root), "--bundle", site.bundle, "--provision", str(tmp_path / "none.json")],
         ("无法读取终端配置文件",)),
        (["--target", str(root), "--bundle", site.bundle, "--server", site.server.url, "--user", "tech",
          "--merchant", str(site.canteen)], ("登录失败", "sign-in refused")),
    ]
    count = site.server.query("SELECT count(*) FROM terminals")
    for args, words in cases:
        done = flash("flash", *args, env={"YKT_ADMIN_PASSWORD": "not the password"})
        assert done.returncode == 2, (args, done.stderr)
        one_bilingual_line(done, *words)
    assert os.listdir(root) == []
    assert site.server.query("SELECT count(*) FROM terminals") == count
    shown = flash("flash", "--help")
    assert shown.returncode == 0 and "示例 / examples" in shown.stdout and "ssh://" in shown.stdout
    assert_no_key_printed()


def test_the_clock_is_saved_and_never_restored_backwards(tmp_path):
    tool = os.path.join(ROOT, "tools", "flash_target", "ykt-clock")
    saved = str(tmp_path / "clock")
    before_s = int(time.time())
    done = subprocess.run(["sh", tool, "save", saved], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with open(saved) as handle:
        assert int(handle.read()) >= before_s
    with open(saved, "w") as handle:
        handle.write("1000000000\n")              # 2001: behind this clock
    kept = subprocess.run(["sh", tool, "restore", saved], capture_output=True, text=True)
    assert kept.returncode == 0 and "not moved" in kept.stdout
    ahead = str(int(time.time()) + 10 * 365 * 86400)
    with open(saved, "w") as handle:
        handle.write(ahead + "\n")                # a later time saved: this clock never writes over it
    assert subprocess.run(["sh", tool, "save", saved], capture_output=True).returncode == 0
    with open(saved) as handle:
        assert handle.read().strip() == ahead
    assert subprocess.run(["sh", tool, "restore"], capture_output=True).returncode == 2


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on a free loopback port: its own host key, one authorized client key."""
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("no /usr/sbin/sshd: Debian's openssh-server (make test installs it)")
    if os.geteuid() != 0:
        pytest.skip("the test's sshd logs in as root, so it runs as root")
    base = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
    shutil.copy(base / "client_key.pub", base / "authorized_keys")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)          # sshd's privilege separation directory
    port = free_port()
    config = base / "sshd_config"
    config.write_text("\n".join([
        "Port %d" % port, "ListenAddress 127.0.0.1", "HostKey %s" % (base / "host_key"),
        "AuthorizedKeysFile %s" % (base / "authorized_keys"), "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PidFile none", ""]))
    process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=open(base / "sshd.log", "wb"))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert process.poll() is None, (base / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd never listened"
                time.sleep(0.1)
        host_key = (base / "host_key.pub").read_text().split()
        (base / "known_hosts").write_text("[127.0.0.1]:%d %s %s\n" % (port, host_key[0], host_key[1]))
        yield port, ["--identity", str(base / "client_key"), "--ssh-option",
                     "UserKnownHostsFile=%s" % (base / "known_hosts"), "--ssh-option", "StrictHostKeyChecking=yes"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_pi_is_flashed_and_verified_over_ssh(site, sshd, tmp_path):
    port, ssh_args = sshd
    provision, document = registered(site, tmp_path)
    root = tmp_path / "pi-root"            # stands in for the Pi's /
    root.mkdir()
    target = "ssh://root@127.0.0.1:%d%s" % (port, root)
    done = flash("flash", "--target", target, "--bundle", site.bundle, "--provision", provision, *ssh_args)
    assert done.returncode == 0, done.stderr
    assert "[6/6]" in done.stdout and "全部一致" in done.stdout
    with open(on(root, "/etc/ykt/terminal.json"), "rb") as handle, open(provision, "rb") as given:
        assert handle.read() == given.read()
    assert (mode(root, "/etc/ykt"), mode(root, "/etc/ykt/terminal.json")) == (0o700, 0o600)
    assert os.readlink(on(root, "/etc/systemd/system/multi-user.target.wants/ykt-terminal.service")) == \
        "/etc/systemd/system/ykt-terminal.service"
    assert flash("verify", "--target", target, *ssh_args).returncode == 0
    with open(on(root, "/etc/systemd/system/ykt-terminal.service"), "a") as handle:
        handle.write("ExecStartPre=/bin/true\n")
    found = flash("verify", "--target", target, *ssh_args)
    assert found.returncode == 3 and "/etc/systemd/system/ykt-terminal.service" in found.stdout
    mended = flash("flash", "--target", target, "--bundle", site.bundle, "--provision", provision, *ssh_args)
    assert mended.returncode == 0 and "[5/6] 时钟与系统服务：写入 1 项" in mended.stdout, mended.stdout
    assert flash("verify", "--target", target, *ssh_args).returncode == 0
    stranger = flash("verify", "--target", target, "--identity", str(tmp_path / "no-key"))
    assert stranger.returncode == 2
    one_bilingual_line(stranger, "无法连接", "cannot reach")
    assert document["terminal_id"] > 0
    assert_no_key_printed()
