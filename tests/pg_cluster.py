"""A private PostgreSQL cluster for tests: a primary, optionally a synchronous hot standby.

    with PgCluster.start(fast=True) as cluster:               # one primary, fsync off
        psycopg.connect(cluster.primary.dsn())
    with PgCluster.start(standby=True) as cluster:            # durable, standby applies before commit returns
        cluster.kill_primary()                                # SIGKILL of the postmaster's process group
        dsn = cluster.promote_standby()

Everything lives in one temporary directory owned by the user the server runs as: data directories,
Unix sockets (the DSNs use these) and logs. Each server also listens on a free loopback port for
tools that need TCP. Nothing touches Debian's own cluster or any system service.

PostgreSQL refuses to run as root, so under root the binaries run as Debian's `postgres` user (or
YKT_PG_USER); a developer who is not root runs them as themself. The binaries are those of the newest
/usr/lib/postgresql/<version>/bin, or of the `initdb` on PATH, or of YKT_PG_BINDIR.

The postmaster is started directly (not through `pg_ctl start`) in its own session, so this process is
its parent: it can kill the whole process group and reap it. `pg_ctl` stops and promotes.
"""
import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

STARTUP_DEADLINE_S = 60    # deadlines to give up waiting, not performance assertions
PROMOTE_DEADLINE_S = 60
STOP_DEADLINE_S = 60
SUPERUSER = "ykt"
STANDBY_NAME = "ykt_standby"
PRISTINE_CLUSTERS = {}    # (bindir, uid): (datadir, password) of an untouched initdb, copied per cluster

# Where durability is not what a test is about. Never used for the standby or failover tests.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
COMMON_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "40",
    "shared_buffers": "'16MB'",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "max_replication_slots": "4",
    "hot_standby": "on",
    "wal_keep_size": "'64MB'",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "dynamic_shared_memory_type": "posix",
}


class PgClusterError(RuntimeError):
    pass


def free_port():
    """A loopback port free right now (PostgreSQL fails to start, clearly, if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_bindir():
    """The directory holding initdb, pg_ctl, postgres and pg_basebackup (all from one version)."""
    wanted = os.environ.get("YKT_PG_BINDIR")
    candidates = [wanted] if wanted else []
    if not wanted:
        versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
        versions.sort(key=lambda path: int(path.split("/")[-3]) if path.split("/")[-3].isdigit() else 0)
        candidates += [os.path.dirname(path) for path in reversed(versions)]
        on_path = shutil.which("initdb")
        if on_path:   # Debian links pg_wrapper into /usr/bin for some tools; follow to the real binary
            candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, tool), os.X_OK)
               for tool in ("initdb", "pg_ctl", "postgres", "pg_basebackup")):
            return bindir
    raise PgClusterError("找不到 PostgreSQL 服务器程序（initdb、pg_ctl、postgres、pg_basebackup），请安装 Debian 的 "
                         "postgresql 包或设置 YKT_PG_BINDIR / PostgreSQL server binaries not found (tried %s); "
                         "install Debian's postgresql package or set YKT_PG_BINDIR" % (candidates or "nothing"))


def server_account():
    """(uid, gid, name) the server binaries run as: ourselves, or an unprivileged user under root."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name
    name = os.environ.get("YKT_PG_USER", "postgres")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PgClusterError("以 root 运行时需要非特权用户 %s 来运行 PostgreSQL（安装 postgresql 包会创建它，或设置 "
                             "YKT_PG_USER） / PostgreSQL refuses to run as root and user %r does not exist "
                             "(Debian's postgresql package creates it; or set YKT_PG_USER)" % (name, name))
    return entry.pw_uid, entry.pw_gid, name


class PgServer:
    """One postmaster: its data directory, socket directory, port and log."""

    def __init__(self, cluster, name, port):
        self.cluster = cluster
        self.name = name
        self.port = port
        self.datadir = os.path.join(cluster.base_dir, name)
        self.socket_dir = os.path.join(cluster.base_dir, name + "-socket")
        self.log_path = os.path.join(cluster.base_dir, name + ".log")
        self.process = None
        self.killed_pids = []   # the postmaster and its children at the moment of kill()

    def dsn(self, dbname="postgres", **params):
        """A libpq URI on this server's Unix socket, usable by psycopg 3."""
        query = {"host": self.socket_dir, "port": str(self.port), "user": SUPERUSER, **params}
        return "postgresql:///%s?%s" % (urllib.parse.quote(dbname), urllib.parse.urlencode(query))

    def tcp_dsn(self, dbname="postgres"):
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (SUPERUSER, self.cluster.password, self.port,
                                                      urllib.parse.quote(dbname))

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def start(self):
        self.cluster.make_dir(self.socket_dir)
        log = open(self.log_path, "ab")
        try:
            self.process = self.cluster.spawn(
                [self.cluster.tool("postgres"), "-D", self.datadir, "-p", str(self.port), "-k", self.socket_dir],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)   # its own process group
        finally:
            log.close()
        self.wait_until_accepting()

    def wait_until_accepting(self):
        import psycopg
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            if self.process.poll() is not None:
                raise PgClusterError("PostgreSQL %s 启动失败 / PostgreSQL %s exited with %s:\n%s"
                                     % (self.name, self.name, self.process.returncode, self.log_tail()))
            try:
                psycopg.connect(self.dsn(connect_timeout="2"), autocommit=True).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PgClusterError("PostgreSQL %s 未能在 %d 秒内接受连接 / PostgreSQL %s did not accept "
                                         "connections within %d s:\n%s" % (self.name, STARTUP_DEADLINE_S, self.name,
                                                                           STARTUP_DEADLINE_S, self.log_tail()))
                time.sleep(0.05)

    def kill(self):
        """SIGKILL the postmaster and every backend, as a power cut would.

        Each backend leads a process group of its own (the postmaster signals them with kill(-pid)), so
        killing the postmaster's group alone would leave them finishing their work: the postmaster is
        stopped first so it forks nothing more, then its group and each child's group are killed."""
        postmaster = self.process.pid
        assert os.getpgid(postmaster) == postmaster, "the postmaster must lead its own group"
        os.kill(postmaster, signal.SIGSTOP)
        self.killed_pids = [postmaster] + self.children()
        for pid in self.killed_pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE_S)
        deadline = time.monotonic() + STOP_DEADLINE_S
        while self.any_alive():
            if time.monotonic() > deadline:
                raise PgClusterError("PostgreSQL %s survived SIGKILL" % self.name)
            time.sleep(0.02)

    def children(self):
        return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and self.stat_field(pid, 1) ==
                str(self.process.pid)]

    def any_alive(self):
        """True while the postmaster or a backend it had when killed is still running (not a zombie)."""
        return any(self.stat_field(pid, 0) not in (None, "Z") for pid in self.killed_pids)

    @staticmethod
    def stat_field(pid, index):
        """A field of /proc/PID/stat after the command name: 0 state, 1 parent pid, 2 process group."""
        try:
            with open("/proc/%s/stat" % pid) as stat:
                return stat.read().rsplit(")", 1)[1].split()[index]
        except OSError:
            return None

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.cluster.run([self.cluster.tool("pg_ctl"), "stop", "-D", self.datadir, "-m", "fast", "-w",
                          "-t", str(STOP_DEADLINE_S)], check=False)
        try:
            self.process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no log)"


class PgCluster:
    """A primary in a private temporary directory, and optionally a streaming synchronous standby."""

    def __init__(self, fast, synchronous_commit, base_dir=None):
        self.fast = fast
        self.synchronous_commit = synchronous_commit
        self.bindir = find_bindir()
        self.uid, self.gid, self.user = server_account()
        self.base_dir = tempfile.mkdtemp(prefix="ykt-pg-", dir=base_dir)
        os.chown(self.base_dir, self.uid, self.gid)
        self.password = secrets.token_hex(12)
        self.primary = PgServer(self, "primary", free_port())
        self.standby = None

    @classmethod
    @contextlib.contextmanager
    def start(cls, fast=False, standby=False, synchronous_commit="remote_apply", base_dir=None):
        """fast: fsync, full_page_writes and synchronous_commit off (never with a standby).
        synchronous_commit for the standby: remote_apply (a commit is visible there when it returns) or on."""
        if fast and standby:
            raise ValueError("a standby is for durability tests: fast (fsync off) is refused with it")
        if synchronous_commit not in ("remote_apply", "on", "remote_write"):
            raise ValueError("synchronous_commit must wait for the standby: remote_apply, on or remote_write")
        cluster = cls(fast, synchronous_commit, base_dir)
        try:
            cluster.init_primary()
            if standby:
                cluster.add_standby()
            yield cluster
        finally:
            cluster.destroy()

    # --- running binaries as the server's user -------------------------------------------------------

    def tool(self, name):
        return os.path.join(self.bindir, name)

    def account_kwargs(self):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
               "HOME": self.base_dir}
        kwargs = {"cwd": self.base_dir, "env": env}
        if os.geteuid() == 0:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        return kwargs

    def spawn(self, argv, **kwargs):
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, **self.account_kwargs(), **kwargs)

    def run(self, argv, check=True):
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=STARTUP_DEADLINE_S, **self.account_kwargs())
        if check and done.returncode != 0:
            raise PgClusterError("%s 失败 / %s failed (%d):\n%s%s" % (os.path.basename(argv[0]), " ".join(argv),
                                                                     done.returncode, done.stdout, done.stderr))
        return done

    def make_dir(self, path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chown(path, self.uid, self.gid)

    def write_private(self, path, text):
        with open(path, "w") as out:
            out.write(text)
        os.chmod(path, 0o600)
        os.chown(path, self.uid, self.gid)

    # --- building the cluster --------------------------------------------------------------------------

    def init_primary(self):
        key = (self.bindir, self.uid)
        if key not in PRISTINE_CLUSTERS:
            PRISTINE_CLUSTERS[key] = self.initdb()
        pristine_datadir, self.password = PRISTINE_CLUSTERS[key]
        self.run(["cp", "-a", pristine_datadir, self.primary.datadir])
        settings = dict(COMMON_SETTINGS)
        settings.update(FAST_SETTINGS if self.fast else {"fsync": "on", "full_page_writes": "on",
                                                         "synchronous_commit": self.synchronous_commit})
        with open(os.path.join(self.primary.datadir, "postgresql.conf"), "a") as conf:
            conf.write("\n# ykt test cluster\n" + "".join("%s = %s\n" % item for item in settings.items()))
        self.primary.start()

    def initdb(self):
        """initdb once per test process, into a directory of its own removed at exit; (datadir, password)."""
        base_dir = tempfile.mkdtemp(prefix="ykt-pg-initdb-", dir=os.path.dirname(self.base_dir))
        atexit.register(shutil.rmtree, base_dir, True)
        os.chown(base_dir, self.uid, self.gid)
        password_file = os.path.join(base_dir, "password")
        self.write_private(password_file, self.password + "\n")
        datadir = os.path.join(base_dir, "data")
        # Sockets sit in a 0700 directory of ours, so local trust reaches no other user; TCP needs the password.
        self.run([self.tool("initdb"), "-D", datadir, "-U", SUPERUSER, "--pwfile", password_file,
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale",
                  "--no-instructions", "--no-sync"])
        os.unlink(password_file)
        return datadir, self.password

    def add_standby(self):
        """pg_basebackup -R from the primary through a physical slot, start it, then make it synchronous."""
        assert self.standby is None and not self.fast
        self.standby = PgServer(self, "standby", free_port())
        self.run([self.tool("pg_basebackup"), "-D", self.standby.datadir, "-R", "-X", "stream", "-C", "-S",
                  STANDBY_NAME, "--checkpoint=fast", "--no-sync", "-d", self.primary.dsn()])
        # -R wrote standby.signal and primary_conninfo; name the walreceiver so the primary can wait for it.
        with open(os.path.join(self.standby.datadir, "postgresql.auto.conf"), "a") as conf:
            conf.write("primary_conninfo = 'host=%s port=%d user=%s application_name=%s'\n"
                       % (self.primary.socket_dir, self.primary.port, SUPERUSER, STANDBY_NAME))
            conf.write("primary_slot_name = '%s'\n" % STANDBY_NAME)
        self.standby.start()
        self.wait_for_streaming()
        # Only now: with a synchronous standby named before it streams, every commit would wait for it.
        with self.connect(self.primary) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '%s'" % STANDBY_NAME)
            conn.execute("SELECT pg_reload_conf()")
        self.wait_for_streaming(sync_state="sync")

    def wait_for_streaming(self, sync_state=None):
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            with self.connect(self.primary) as conn:
                row = conn.execute("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                                   (STANDBY_NAME,)).fetchone()
            if row and row[0] == "streaming" and (sync_state is None or row[1] == sync_state):
                return
            if time.monotonic() > deadline:
                raise PgClusterError("备库未开始同步复制 / the standby is not streaming (%s):\n%s"
                                     % (row, self.standby.log_tail()))
            time.sleep(0.05)

    def connect(self, server, dbname="postgres"):
        import psycopg
        return psycopg.connect(server.dsn(dbname), autocommit=True)

    def multi_host_dsn(self, dbname="postgres", **params):
        """Primary then standby, taking whichever accepts writes: follows a promotion with no change."""
        servers = [self.primary] + ([self.standby] if self.standby else [])
        query = {"host": ",".join(s.socket_dir for s in servers), "port": ",".join(str(s.port) for s in servers),
                 "user": SUPERUSER, "target_session_attrs": "read-write", **params}
        return "postgresql:///%s?%s" % (urllib.parse.quote(dbname), urllib.parse.urlencode(query))

    # --- failover --------------------------------------------------------------------------------------

    def kill_primary(self):
        self.primary.kill()

    def promote_standby(self):
        """pg_ctl promote, wait until the standby has left recovery; returns its DSN (now the primary's)."""
        # -W: pg_ctl's own wait polls in whole seconds; asking the server is quicker and says the same.
        self.run([self.tool("pg_ctl"), "promote", "-D", self.standby.datadir, "-W"])
        deadline = time.monotonic() + PROMOTE_DEADLINE_S
        while True:
            with self.connect(self.standby) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return self.standby.dsn()
            if time.monotonic() > deadline:
                raise PgClusterError("备库提升失败 / the standby did not leave recovery:\n%s" % self.standby.log_tail())
            time.sleep(0.05)

    def destroy(self):
        for server in (self.standby, self.primary):
            if server is not None:
                try:
                    server.stop()
                except Exception:
                    if server.process and server.process.poll() is None:
                        server.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)
