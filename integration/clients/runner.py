#!/usr/bin/env python3
"""Real-client matrix for rlsgate: drivers' own test suites and a golden protocol diff.

Started by ``run.sh`` (which installs the packages first); see README.md beside this file.

For every suite, the runner:
  1. recreates the suite's database (owned by the non-superuser role ``suite``),
  2. runs the suite directly against PostgreSQL (the baseline),
  3. runs it through rlsgate, once per pool mode, with a JWT as the password,
  4. runs it through PgBouncer in the same modes, for reference,
and parses passed/failed/skipped per test. A test failing through rlsgate but not
directly must be listed in ``expected-failures/<suite>.txt`` with a reason, or the run
fails. RESULTS.md is regenerated at the end.

Why a role ``suite`` and no RLS: rlsgate refuses superuser and BYPASSRLS upstream roles
(RLS never applies to them), so the upstream role is ``suite`` (LOGIN NOSUPERUSER
NOBYPASSRLS CREATEDB CREATEROLE). It owns every database and object the suites create; no table has
RLS enabled (let alone forced), so the token's tenant filters nothing and the suites see
PostgreSQL exactly as they would directly. The direct baseline runs as the same role, so
the only difference between the columns is the proxy.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = Path(os.environ.get("RLSGATE_CLIENTS_WORK", "/var/tmp/rlsgate-clients"))
CACHE = WORK / "cache"
RUN = WORK / "run"
PG_BIN = Path(os.environ.get("PG_BIN_DIR", "/usr/lib/postgresql/15/bin"))
RLSGATE = Path(os.environ.get("RLSGATE_BIN", REPO / "target/release/rlsgate"))
SUITE_ROLE = "suite"
TENANT = "clients-suite"
ALL_MODES = ("session", "transaction")
IS_ROOT = os.geteuid() == 0

# Versions of what is fetched from the registries (run.sh installs the same ones).
PSYCOPG2_VERSION = "2.9.13"
ASYNCPG_VERSION = "0.32.0"
TOKIO_POSTGRES_VERSION = "0.7.18"
TOKIO_POSTGRES_FEATURES = [
    "array-impls", "with-bit-vec-0_6", "with-chrono-0_4", "with-eui48-1",
    "with-geo-types-0_7", "with-serde_json-1", "with-time-0_3", "with-uuid-1",
]


def log(msg: str) -> None:
    print(f"[clients {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def os_user(name: str):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise SystemExit(f"no OS user `{name}`: install the postgresql package (it creates it)")


def as_user(cmd: list[str], user: str | None) -> list[str]:
    """Prefixes `cmd` so it runs as `user` when we are root."""
    if IS_ROOT and user:
        return ["runuser", "-u", user, "--"] + cmd
    return cmd


def chown_tree(path: Path, user: str) -> None:
    if not IS_ROOT:
        return
    pw = os_user(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)


def run(cmd, *, env=None, cwd=None, timeout=None, check=True, input=None, user=None) -> subprocess.CompletedProcess:
    cmd = as_user([str(c) for c in cmd], user)
    p = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, input=input,
                       capture_output=True, text=True, stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def run_logged(cmd, *, env, cwd, timeout, logfile: Path, user=None) -> tuple[int | None, float]:
    """Runs `cmd` in its own process group with output to `logfile`. Returns (exit code or
    None on timeout, seconds)."""
    cmd = as_user([str(c) for c in cmd], user)
    start = time.monotonic()
    with open(logfile, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p)
            out.write(f"\n*** killed after the suite timeout of {timeout}s ***\n".encode())
            rc = None
    return rc, time.monotonic() - start


def kill_group(p: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "PSYCOPG2_", "RLSGATE_"))}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


# --------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    """A throwaway cluster (initdb + pg_ctl as the `postgres` OS user when root)."""

    HBA = """\
# written by integration/clients/runner.py
local all all trust
host all postgres 127.0.0.1/32 trust
host all pass_user 127.0.0.1/32 password
host all md5_user 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
"""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.sock = root / "socket"
        self.port = 0
        self.user = "postgres" if IS_ROOT else None

    def start(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (PG_BIN / tool).exists():
                raise SystemExit(f"{PG_BIN / tool} missing: apt-get install -y postgresql (or set PG_BIN_DIR)")
        stop_stale_cluster(self.root)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.sock.mkdir(parents=True)
        if self.user:
            chown_tree(self.root, self.user)
        run([PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"], user=self.user, cwd=self.root)
        (self.data / "pg_hba.conf").write_text(self.HBA)
        for attempt in range(3):
            self.port = free_port()
            with open(self.data / "postgresql.conf", "a") as f:
                f.write(f"""
# --- integration/clients ---
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.sock}'
fsync = off
full_page_writes = off
synchronous_commit = off
max_connections = 400
max_prepared_transactions = 20
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
log_min_messages = warning
""")
            p = run([PG_BIN / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.root / "postgres.log"],
                    user=self.user, cwd=self.root, check=False)
            if p.returncode == 0:
                return
            log(f"PostgreSQL start failed (attempt {attempt + 1}): {p.stderr.strip()}")
        raise RuntimeError(f"PostgreSQL did not start; see {self.root / 'postgres.log'}")

    def stop(self) -> None:
        stop_stale_cluster(self.root)

    def psql(self, db: str, sql: str, check=True) -> str:
        p = run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.sock, "-p", self.port,
                 "-U", "postgres", "-d", db, "-f", "-"], input=sql, env=base_env(), check=check)
        return p.stdout.strip()


def stop_stale_cluster(root: Path) -> None:
    """Stops a cluster left running in `root` (an interrupted run), so it can be removed."""
    data = root / "data"
    if (data / "postmaster.pid").exists():
        run([PG_BIN / "pg_ctl", "stop", "-w", "-m", "immediate", "-D", data],
            user="postgres" if IS_ROOT else None, cwd="/", check=False)


# --------------------------------------------------------------------------------------
# Endpoints: direct, rlsgate (per mode), pgbouncer (per mode)


@dataclasses.dataclass
class Endpoint:
    kind: str  # direct | rlsgate | pgbouncer
    mode: str | None
    host: str
    port: int
    user: str
    password: str
    dbname: str
    proc: subprocess.Popen | None = None
    logfile: Path | None = None

    @property
    def label(self) -> str:
        return self.kind if self.mode is None else f"{self.kind}:{self.mode}"

    def libpq_env(self) -> dict:
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password, "PGDATABASE": self.dbname, "PGSSLMODE": "disable"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The whole process group (PgBouncer runs under runuser); SIGTERM is PgBouncer's
            # immediate shutdown and rlsgate's graceful one.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
        self.proc = None


class Env:
    """Shared state for one run: the cluster, secrets, the token."""

    def __init__(self, pg: Postgres, args):
        self.pg = pg
        self.args = args
        self.suite_password = secrets.token_hex(16)
        self.jwt_secret = secrets.token_hex(32)
        self.secrets_dir = RUN / "secrets"
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o755)
        (self.secrets_dir / "upstream.pw").write_text(self.suite_password + "\n")
        (self.secrets_dir / "jwt.secret").write_text(self.jwt_secret + "\n")
        env = base_env() | {"CLIENTS_JWT_SECRET": self.jwt_secret}
        self.token = run([RLSGATE, "token", "--secret-env", "CLIENTS_JWT_SECRET", "--tenant", TENANT,
                          "--sub", "clients-runner", "--ttl", "6h"], env=env).stdout.strip()

    def setup_roles(self) -> None:
        pw = self.suite_password
        self.pg.psql("postgres", f"""
CREATE ROLE {SUITE_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS CREATEDB CREATEROLE PASSWORD '{pw}';
-- tokio-postgres's authentication tests (direct only: rlsgate authenticates by JWT)
CREATE ROLE pass_user LOGIN PASSWORD 'password';
CREATE ROLE scram_user LOGIN PASSWORD 'password';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'password';
RESET password_encryption;
-- asyncpg and tokio-postgres use the database `postgres`: the suite role owns it (so it
-- may create extensions there). tokio-postgres expects `postgres` to be the first row
-- of pg_database in heap order, which the owner change breaks: rewriting the two
-- template rows after it restores that.
ALTER DATABASE postgres OWNER TO {SUITE_ROLE};
ALTER DATABASE template1 CONNECTION LIMIT -1;
ALTER DATABASE template0 CONNECTION LIMIT -1;
""")

    def reset_db(self, db: str, extensions=()) -> None:
        """Gives the suite a clean database owned by (or, for `postgres`, writable by) the
        suite role, so every run starts from the same state."""
        if db == "postgres":
            # Not dropped (tokio-postgres expects `postgres` first in pg_database, see
            # setup_roles): everything the suite role created there goes instead.
            self.pg.psql(db, f"""
DROP OWNED BY {SUITE_ROLE} CASCADE;
DROP EXTENSION IF EXISTS hstore, citext, ltree, isn CASCADE;
""")
        else:
            self.pg.psql("template1", f"DROP DATABASE IF EXISTS {db} WITH (FORCE);")
            self.pg.psql("template1", f"CREATE DATABASE {db} OWNER {SUITE_ROLE};")
        for ext in extensions:
            self.pg.psql(db, f"CREATE EXTENSION IF NOT EXISTS {ext};")
        # Databases the suites create for themselves (asyncpg: testdb, ...) must not survive.
        leftovers = self.pg.psql("template1", f"SELECT datname FROM pg_database d JOIN pg_roles r "
                                 f"ON r.oid = d.datdba WHERE r.rolname = '{SUITE_ROLE}' AND datname NOT IN ('{db}', 'postgres')")
        for other in filter(None, leftovers.splitlines()):
            self.pg.psql("template1", f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE);')

    def direct(self, db: str) -> Endpoint:
        return Endpoint("direct", None, "127.0.0.1", self.pg.port, SUITE_ROLE, self.suite_password, db)

    def rlsgate_config(self, db: str, mode: str, port: int) -> str:
        return f"""# written by integration/clients/runner.py
[listen]
addr = "127.0.0.1:{port}"
max_clients = 1000
shutdown_timeout = "2s"

[tls]
mode = "prefer"

[auth.jwt]
algorithms = ["HS256"]
secret_file = "{self.secrets_dir / 'jwt.secret'}"

[upstream]
url = "postgres://{SUITE_ROLE}@127.0.0.1:{self.pg.port}/{db}"
password_file = "{self.secrets_dir / 'upstream.pw'}"

[pool]
mode = "{mode}"
size = 150
acquire_timeout = "10s"

[tenant]
setting = "app.current_tenant"

[guard]
# The suites test large objects (psycopg2 lobject, libpq's FunctionCall path); rlsgate
# refuses them by default because every tenant of the shared role could read them.
allow_large_objects = true
"""

    def mode_supported(self, mode: str) -> tuple[bool, str]:
        path = RUN / f"check-{mode}.toml"
        path.write_text(self.rlsgate_config("postgres", mode, free_port()))
        p = run([RLSGATE, "check-config", "--config", path], env=base_env(), check=False)
        return p.returncode == 0, (p.stderr or p.stdout).strip()

    def start_rlsgate(self, db: str, mode: str, logdir: Path) -> Endpoint:
        port = free_port()
        cfg = logdir / f"rlsgate-{mode}.toml"
        cfg.write_text(self.rlsgate_config(db, mode, port))
        logfile = logdir / f"rlsgate-{mode}.log"
        env = base_env() | {"RUST_LOG": os.environ.get("CLIENTS_RLSGATE_LOG", "info"), "NO_COLOR": "1"}
        out = open(logfile, "ab")
        proc = subprocess.Popen([str(RLSGATE), "serve", "--config", str(cfg)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        ep = Endpoint("rlsgate", mode, "127.0.0.1", port, SUITE_ROLE, self.token, db, proc, logfile)
        try:
            wait_port(port, 20, proc)
        except Exception:
            ep.stop()
            raise
        return ep

    def start_pgbouncer(self, db: str, mode: str, logdir: Path) -> Endpoint:
        port = free_port()
        bdir = logdir / f"pgbouncer-{mode}"
        bdir.mkdir(parents=True, exist_ok=True)
        (bdir / "pgbouncer.ini").write_text(f"""; written by integration/clients/runner.py
[databases]
{db} = host=127.0.0.1 port={self.pg.port} dbname={db} user={SUITE_ROLE} password={self.suite_password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = {mode}
default_pool_size = 150
max_client_conn = 1000
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits,options,search_path,geqo,statement_timeout
logfile = {bdir / 'pgbouncer.log'}
pidfile = {bdir / 'pgbouncer.pid'}
admin_users = postgres
""")
        user = "postgres" if IS_ROOT else None
        if user:
            chown_tree(bdir, user)
        proc = subprocess.Popen(as_user(["pgbouncer", str(bdir / "pgbouncer.ini")], user), env=base_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        # auth_type=any: the user name is ignored and the password is not asked for.
        ep = Endpoint("pgbouncer", mode, "127.0.0.1", port, SUITE_ROLE, "unused", db, proc,
                      bdir / "pgbouncer.log")
        try:
            wait_port(port, 20, proc)
        except Exception:
            ep.stop()
            raise
        return ep


# --------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Outcome:
    passed: set = dataclasses.field(default_factory=set)
    failed: set = dataclasses.field(default_factory=set)
    skipped: set = dataclasses.field(default_factory=set)
    error: str | None = None  # the run itself went wrong (timeout, crash, no output)
    seconds: float = 0.0
    details: dict = dataclasses.field(default_factory=dict)  # test -> short failure text
    # Through rlsgate: failed in the first run, passed in the retry (see `retry_flaky`).
    flaky: set = dataclasses.field(default_factory=set)
    first_error: str | None = None

    def counts(self) -> str:
        s = f"{len(self.passed)}/{len(self.failed)}/{len(self.skipped)}"
        return s + (" ⚠" if self.error else "")

    def to_json(self) -> dict:
        return {"passed": sorted(self.passed), "failed": sorted(self.failed), "skipped": sorted(self.skipped),
                "error": self.error, "seconds": round(self.seconds, 1), "details": self.details,
                "flaky": sorted(self.flaky), "first_error": self.first_error}


def parse_junit(path: Path) -> Outcome:
    o = Outcome()
    if not path.exists():
        o.error = f"no report {path.name}"
        return o
    root = ET.parse(path).getroot()
    for tc in root.iter("testcase"):
        cls = tc.get("classname", "")
        name = f"{cls}::{tc.get('name')}" if cls else tc.get("name")
        # pytest's classname is "tests.test_x.Class": keep it short and stable.
        name = re.sub(r"^tests\.", "", name)
        failure = tc.find("failure")
        if failure is None:
            failure = tc.find("error")
        if failure is not None:
            o.failed.add(name)
            o.details[name] = (failure.get("message") or "").strip().splitlines()[0][:1000] if failure.get("message") else ""
        elif tc.find("skipped") is not None:
            o.skipped.add(name)
        else:
            o.passed.add(name)
    return o


def parse_lines(text: str) -> Outcome:
    """The format of our own check programs: `PASS name`, `FAIL name: why`, `SKIP name: why`."""
    o = Outcome()
    for line in text.splitlines():
        m = re.match(r"^(PASS|FAIL|SKIP) ([^:]+?)(?::\s*(.*))?$", line.strip())
        if not m:
            continue
        kind, name, why = m.group(1), m.group(2).strip(), (m.group(3) or "")
        {"PASS": o.passed, "FAIL": o.failed, "SKIP": o.skipped}[kind].add(name)
        if kind == "FAIL":
            o.details[name] = why[:1000]
    o.passed -= o.failed  # a name is counted once: FAIL wins
    return o


@dataclasses.dataclass
class Expected:
    modes: str  # "all", "session", "transaction", "session,transaction"
    pattern: str  # glob over test ids
    reason: str
    message: str | None = None  # substring the failure message must contain
    common: bool = False  # from _common.txt: not reported as stale where it never applies

    def matches(self, mode: str, test: str, detail: str = "") -> bool:
        return ((self.modes == "all" or mode in self.modes.split(","))
                and fnmatch.fnmatchcase(test, self.pattern)
                and (self.message is None or self.message in detail))

    def applies_to(self, mode: str) -> bool:
        return self.modes == "all" or mode in self.modes.split(",")


def load_expected(suite: str) -> list[Expected]:
    """expected-failures/<suite>.txt: `<modes> <test-glob> [msg="<substring>"] -- <reason>`;
    `#` comments. See expected-failures/README.md."""
    out = []
    for path in (HERE / "expected-failures" / f"{suite}.txt", HERE / "expected-failures" / "_common.txt"):
        if path.exists():
            out += parse_expected(path, common=path.name == "_common.txt")
    return out


def parse_expected(path: Path, common: bool = False) -> list[Expected]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^(\S+)\s+(\S+)(?:\s+msg="([^"]*)")?\s+--\s+(.+)$', line)
        if not m:
            raise SystemExit(f'{path}:{n}: expected `<modes> <test-glob> [msg="..."] -- <reason>`')
        out.append(Expected(m.group(1), m.group(2), m.group(4), m.group(3), common))
    return out


# --------------------------------------------------------------------------------------
# Suites


class Suite:
    name = ""
    title = ""
    db = ""
    extensions: tuple = ()
    timeout = 600
    os_user: str | None = None  # run the suite as this OS user when root

    def __init__(self, env: Env):
        self.env = env

    def prepare(self) -> None:
        """One-time preparation (unpack sources, compile)."""

    def run(self, ep: Endpoint, outdir: Path) -> Outcome:
        raise NotImplementedError

    def after_reset(self) -> None:
        """Per-run setup as superuser after the database is recreated."""


class Psycopg2(Suite):
    name, title, db = "psycopg2", f"psycopg2 {PSYCOPG2_VERSION} test suite", "psycopg2_test"
    extensions = ("hstore",)
    timeout = 600

    def prepare(self):
        self.src = unpack_sdist("psycopg2", PSYCOPG2_VERSION)

    def run(self, ep, outdir):
        env = base_env() | {
            "PSYCOPG2_TESTDB": ep.dbname, "PSYCOPG2_TESTDB_HOST": ep.host, "PSYCOPG2_TESTDB_PORT": str(ep.port),
            "PSYCOPG2_TESTDB_USER": ep.user, "PSYCOPG2_TESTDB_PASSWORD": ep.password, "PGSSLMODE": "disable",
            "PYTHONPATH": str(self.src),
        }
        report = outdir / "report.json"
        rc, secs = run_logged([venv_python(), HERE / "lib" / "unittest_json.py", "tests:test_suite", report],
                              env=env, cwd=self.src, timeout=self.timeout, logfile=outdir / "output.log")
        return outcome_from_json(report, rc, secs)


class Asyncpg(Suite):
    name, title, db = "asyncpg", f"asyncpg {ASYNCPG_VERSION} test suite", "postgres"
    timeout = 480
    os_user = "postgres"  # its cluster fixtures run initdb, which refuses root

    def prepare(self):
        src = unpack_sdist("asyncpg", ASYNCPG_VERSION)
        # Only tests/: next to the sdist's uncompiled asyncpg/ package the import would
        # pick the source tree instead of the installed wheel.
        self.tests = CACHE / f"asyncpg-{ASYNCPG_VERSION}-tests"
        if not self.tests.exists():
            shutil.copytree(src / "tests", self.tests / "tests")
        chown_tree(self.tests, self.os_user)

    def run(self, ep, outdir):
        chown_tree(outdir, self.os_user)
        env = base_env() | ep.libpq_env() | {"HOME": str(outdir), "PGSSLMODE": "disable",
                                              "PATH": f"{PG_BIN}:{os.environ['PATH']}"}
        report = outdir / "junit.xml"
        rc, secs = run_logged(
            [venv_python(), "-m", "pytest", "-p", "no:cacheprovider", "--import-mode=importlib", "-q",
             # A hung test fails alone instead of eating the whole suite's time.
             "--timeout=60",
             "--tb=line", "-o", "junit_family=xunit1", f"--junitxml={report}", "tests",
             # flake8/mypy of asyncpg's own sources: not about the server at all.
             "--deselect", "tests/test__sourcecode.py"],
            env=env, cwd=self.tests, timeout=self.timeout, logfile=outdir / "output.log", user=self.os_user)
        o = parse_junit(report)
        o.seconds = secs
        if rc is None:
            o.error = f"timed out after {self.timeout}s"
        return o


class TokioPostgres(Suite):
    name, title, db = "tokio-postgres", f"tokio-postgres {TOKIO_POSTGRES_VERSION} test suite", "postgres"
    extensions = ("hstore", "citext", "ltree")
    # Directly and through rlsgate the suite takes seconds; through PgBouncer in
    # transaction mode `runtime::cancel_query` hangs until this timeout.
    timeout = 150

    # Its tests hard-code `127.0.0.1:5433`, `user=postgres` with trust auth, and
    # `dbname=postgres`. We rewrite only those connection details (to read them from
    # RLSGATE_TP_* variables at run time); every test body stays as published.
    def prepare(self):
        src = cargo_crate_source("tokio-postgres", TOKIO_POSTGRES_VERSION)
        self.dir = CACHE / f"tokio-postgres-{TOKIO_POSTGRES_VERSION}-tests"
        stamp = self.dir / ".patched"
        if not stamp.exists():
            if self.dir.exists():
                shutil.rmtree(self.dir)
            shutil.copytree(src, self.dir)
            patch_tokio_postgres(self.dir)
            stamp.write_text("ok\n")
        env = base_env() | {"CARGO_TARGET_DIR": str(CACHE / "tokio-postgres-target")}
        log("building tokio-postgres tests (cached after the first run)")
        p = run(["cargo", "test", "--locked", "--no-run", "--message-format=json", "--test", "test",
                 "--features", ",".join(TOKIO_POSTGRES_FEATURES)], env=env, cwd=self.dir, timeout=1800)
        self.binary = None
        for line in p.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "test":
                self.binary = msg["executable"]
        if not self.binary:
            raise RuntimeError("tokio-postgres test binary not found in cargo's output")

    def run(self, ep, outdir):
        env = base_env() | {"RLSGATE_TP_PORT": str(ep.port), "RLSGATE_TP_USER": ep.user,
                            "RLSGATE_TP_PASSWORD": ep.password, "RLSGATE_TP_DBNAME": ep.dbname,
                            "RUST_BACKTRACE": "0"}
        rc, secs = run_logged([self.binary, "--test-threads=2"], env=env, cwd=self.dir, timeout=self.timeout, logfile=outdir / "output.log")
        o = parse_libtest((outdir / "output.log").read_text(errors="replace"))
        o.seconds = secs
        if rc is None:
            o.error = f"timed out after {self.timeout}s"
        elif not (o.passed or o.failed):
            o.error = f"no test results (exit {rc})"
        return o


def patch_tokio_postgres(d: Path) -> None:
    helper = r'''

// ---- added by rlsgate integration/clients/runner.py: connection details from the environment
#[allow(dead_code)]
pub fn rlsgate_port() -> String {
    std::env::var("RLSGATE_TP_PORT").unwrap_or_else(|_| "5433".into())
}
#[allow(dead_code)]
pub fn rlsgate_addr() -> String {
    format!("127.0.0.1:{}", rlsgate_port())
}
/// `user=postgres` (trust auth upstream) becomes the runner's user, password and
/// database; port 5433 becomes the runner's port. Other users are left alone.
#[allow(dead_code)]
pub fn rlsgate_dsn(s: &str) -> String {
    let mut s = s.replace("5433", &rlsgate_port());
    if let (Ok(user), Ok(password)) = (std::env::var("RLSGATE_TP_USER"), std::env::var("RLSGATE_TP_PASSWORD")) {
        if s.contains("user=postgres") {
            let db = std::env::var("RLSGATE_TP_DBNAME").unwrap_or_else(|_| "postgres".into());
            s = s.replace("user=postgres", &format!("user={user} password={password} dbname={db}"));
        }
    }
    s
}
'''
    main = d / "tests/test/main.rs"
    text = main.read_text()
    edits = [
        ('TcpStream::connect("127.0.0.1:5433")', "TcpStream::connect(rlsgate_addr())", 2),
        ("let config = s.parse::<Config>().unwrap();", "let config = rlsgate_dsn(s).parse::<Config>().unwrap();", 1),
    ]
    for old, new, count in edits:
        if text.count(old) != count:
            raise RuntimeError(f"tokio-postgres main.rs: expected {count}x {old!r}, found {text.count(old)}")
        text = text.replace(old, new)
    main.write_text(text + helper)
    for rel in ("tests/test/runtime.rs",):
        f = d / rel
        t = f.read_text()
        n = t.count("tokio_postgres::connect(")
        if n < 5:
            raise RuntimeError(f"tokio-postgres {rel}: expected tokio_postgres::connect( calls, found {n}")
        # `tokio_postgres::connect(<str expr>, NoTls)` -> through rlsgate_dsn.
        t = re.sub(r'tokio_postgres::connect\(\s*("(?:[^"\\]|\\.)*"|&?[A-Za-z_][\w.]*)\s*,\s*NoTls,?\s*\)',
                   r"tokio_postgres::connect(&crate::rlsgate_dsn(\1), NoTls)", t, flags=re.S)
        if t.count("crate::rlsgate_dsn(") != n:
            raise RuntimeError(f"tokio-postgres {rel}: could not rewrite all {n} connect calls")
        f.write_text(t)


def parse_libtest(text: str) -> Outcome:
    o = Outcome()
    for m in re.finditer(r"^test (\S+) \.\.\. (ok|FAILED|ignored)", text, re.M):
        name, st = m.group(1), m.group(2)
        {"ok": o.passed, "FAILED": o.failed, "ignored": o.skipped}[st].add(name)
    for m in re.finditer(r"^---- (\S+) stdout ----\n(.*?)(?=^---- |\Z|^failures:)", text, re.M | re.S):
        msg = " ".join(l.strip() for l in m.group(2).splitlines() if "panicked" in l or "called" in l)
        o.details[m.group(1)] = msg[:1000]
    return o


class GoLibPq(Suite):
    name, title, db = "lib-pq", "Go lib/pq tests (Debian golang-github-lib-pq-dev)", "pqgotest"
    timeout = 300
    SRC = Path("/usr/share/gocode/src/github.com/lib/pq")

    def prepare(self):
        if not self.SRC.exists():
            raise SystemExit(f"{self.SRC} missing: apt-get install -y golang-github-lib-pq-dev")
        self.dir = CACHE / "lib-pq"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        shutil.copytree(self.SRC, self.dir, symlinks=False)
        self.goenv = base_env() | {"GOPATH": str(CACHE / "gopath"), "GOCACHE": str(CACHE / "gocache"),
                                   "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GO111MODULE": "on",
                                   "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        log("building lib/pq tests")
        run(["go", "test", "-count=1", "-c", "-o", CACHE / "lib-pq.test", "."], env=self.goenv, cwd=self.dir, timeout=600)

    def run(self, ep, outdir):
        env = self.goenv | ep.libpq_env()
        rc, secs = run_logged([CACHE / "lib-pq.test", "-test.v", "-test.count=1", f"-test.timeout={self.timeout - 20}s"],
                              env=env, cwd=self.dir, timeout=self.timeout, logfile=outdir / "output.log")
        o = Outcome(seconds=secs)
        text = (outdir / "output.log").read_text(errors="replace")
        for m in re.finditer(r"^--- (PASS|FAIL|SKIP): (\S+)", text, re.M):
            {"PASS": o.passed, "FAIL": o.failed, "SKIP": o.skipped}[m.group(1)].add(m.group(2))
        # `go test -v` prints a test's t.Log/t.Fatal lines between "=== RUN" and "--- FAIL".
        for m in re.finditer(r"^=== RUN   (\S+)\n(.*?)^--- FAIL: \1 ", text, re.M | re.S):
            lines = [l.strip() for l in m.group(2).splitlines() if l.strip() and not l.startswith("=== ")]
            o.details[m.group(1)] = " ".join(lines)[:1000]
        if rc is None:
            o.error = f"timed out after {self.timeout}s"
        elif rc != 0 and not o.failed:
            o.error = f"exit {rc} without a failing test (panic or build error?)"
        return o


class Jdbc(Suite):
    name, title, db = "pgjdbc", "pgJDBC (Debian libpostgresql-jdbc-java) JdbcCheck.java", "suite_jdbc"
    timeout = 180
    JAR = Path("/usr/share/java/postgresql.jar")

    def prepare(self):
        if not self.JAR.exists():
            raise SystemExit(f"{self.JAR} missing: apt-get install -y libpostgresql-jdbc-java")

    def run(self, ep, outdir):
        env = base_env() | {"JDBC_URL": f"jdbc:postgresql://{ep.host}:{ep.port}/{ep.dbname}?sslmode=disable",
                            "JDBC_USER": ep.user, "JDBC_PASSWORD": ep.password, "CHECK_MODE": ep.label}
        rc, secs = run_logged(["java", "-cp", self.JAR, HERE / "jdbc" / "JdbcCheck.java"], env=env, cwd=outdir,
                              timeout=self.timeout, logfile=outdir / "output.log")
        return lines_outcome(outdir, rc, secs, self.timeout)


class Node(Suite):
    name, title, db = "node-postgres", "node-postgres (pg, pg-cursor, pg-copy-streams) check.js", "suite_node"
    timeout = 180

    def run(self, ep, outdir):
        env = base_env() | ep.libpq_env() | {"NODE_PATH": str(CACHE / "node" / "node_modules"),
                                              "CHECK_MODE": ep.label}
        rc, secs = run_logged(["node", HERE / "node" / "check.js"], env=env, cwd=outdir,
                              timeout=self.timeout, logfile=outdir / "output.log")
        return lines_outcome(outdir, rc, secs, self.timeout)


class Pgbench(Suite):
    name, title, db = "pgbench", "pgbench -M simple|extended|prepared", "suite_pgbench"
    timeout = 300
    TRANSACTIONS = 300
    CLIENTS = 4

    def after_reset(self):
        # Initialised directly as the suite role; only the benchmark runs go through the proxy.
        d = self.env.direct(self.db)
        run(["pgbench", "-i", "-s", "1", "-q"], env=base_env() | d.libpq_env(), timeout=120)

    def run(self, ep, outdir):
        o = Outcome()
        start = time.monotonic()
        for proto in ("simple", "extended", "prepared"):
            name = f"pgbench -M {proto}"
            logf = outdir / f"{proto}.log"
            rc, _ = run_logged(["pgbench", "-n", "-M", proto, "-c", self.CLIENTS, "-j", "2",
                                "-t", self.TRANSACTIONS, "-r"], env=base_env() | ep.libpq_env(), cwd=outdir,
                               timeout=120, logfile=logf)
            text = logf.read_text(errors="replace")
            want = self.CLIENTS * self.TRANSACTIONS
            m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", text)
            failed = re.search(r"number of failed transactions: (\d+)", text)
            if rc == 0 and m and int(m.group(1)) == want and (not failed or failed.group(1) == "0"):
                o.passed.add(name)
            else:
                o.failed.add(name)
                errs = [l for l in text.splitlines() if "error" in l.lower() or "aborted" in l.lower()]
                o.details[name] = (f"exit {rc}; " + (m.group(0) if m else "no summary") + "; " + " | ".join(errs[:2]))[:300]
        o.seconds = time.monotonic() - start
        return o


class Pgproto(Suite):
    """Golden protocol diff: each script in pgproto/*.txt is sent with pgproto (the
    pgpool2 tool, textual trace) and with pgproto/replay.py (same scripts, a byte-exact
    dump of every backend message). The direct output is the golden one."""
    name, title, db = "pgproto", "golden protocol diff (pgproto + byte-exact replay)", "suite_pgproto"
    timeout = 300

    def scripts(self) -> list[Path]:
        return sorted((HERE / "pgproto").glob("*.txt"))

    def run(self, ep, outdir):
        o = Outcome()
        start = time.monotonic()
        golden = RUN / "pgproto-golden"
        is_golden = ep.kind == "direct"
        golden.mkdir(exist_ok=True)
        for script in self.scripts():
            script_file = materialize_script(script, outdir)
            replay_only = "# replay-only" in script.read_text()[:300]
            for tool in ("replay",) if replay_only else ("pgproto", "replay"):
                name = f"{tool}:{script.stem}"
                out = outdir / f"{script.stem}.{tool}.out"
                if tool == "pgproto":
                    cmd = ["pgproto", "-h", ep.host, "-p", ep.port, "-u", ep.user, "-d", ep.dbname, "-f", script_file]
                else:
                    cmd = [sys.executable, HERE / "pgproto" / "replay.py", "--host", ep.host, "--port", ep.port,
                           "--user", ep.user, "--database", ep.dbname, script_file]
                env = base_env() | {"PGPASSWORD": ep.password, "PGSSLMODE": "disable"}
                try:
                    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, timeout=60,
                                       stdin=subprocess.DEVNULL)
                    text = normalize_proto(p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace"))
                except subprocess.TimeoutExpired:
                    text = "*** timed out after 60s ***\n"
                out.write_text(text)
                gfile = golden / out.name
                if is_golden:
                    gfile.write_text(text)
                    bad = "*** timed out" in text or "Failed to connect" in text or "Traceback" in text
                    (o.failed if bad else o.passed).add(name)
                    if bad:
                        o.details[name] = text.strip().splitlines()[-1][:300]
                elif not gfile.exists():
                    o.skipped.add(name)
                elif gfile.read_text() == text:
                    o.passed.add(name)
                else:
                    o.failed.add(name)
                    diff = subprocess.run(["diff", "-u", "--label", "direct", "--label", ep.label, str(gfile), str(out)],
                                          capture_output=True, text=True).stdout
                    (outdir / f"{script.stem}.{tool}.diff").write_text(diff)
                    first = [l for l in diff.splitlines()[2:] if l[:1] in "+-"][:2]
                    o.details[name] = " / ".join(first)[:1000]
        o.seconds = time.monotonic() - start
        return o


def materialize_script(script: Path, outdir: Path) -> Path:
    """Scripts may contain `{{repeat:TEXT:N}}` (the >1 MB messages), expanded here since a
    megabyte does not belong in the repository. pgproto reads lines of at most 8 kB, so
    the expansion is split into continuation lines (backslash-newline), which both pgproto
    and replay.py turn into a newline inside the string."""
    text = script.read_text()
    if "{{" not in text:
        return script

    def expand(m):
        s = m.group(1) * int(m.group(2))
        return "\\\n".join(s[i:i + 4000] for i in range(0, len(s), 4000))

    text = re.sub(r"\{\{repeat:([^:}]*):(\d+)\}\}", expand, text)
    out = outdir / script.name
    out.write_text(text)
    return out


def normalize_proto(text: str) -> str:
    """Masks the documented differences: backend pid and cancel key, and pids in
    notifications and messages."""
    text = re.sub(r"(BackendKeyData\(pid=)-?\d+(, key=)-?\d+", r"\1<pid>\2<key>", text)
    text = re.sub(r"(Notification response\. pid: )-?\d+", r"\1<pid>", text)
    text = re.sub(r"(NotificationResponse\(pid=)-?\d+", r"\1<pid>", text)
    # RowDescription: OIDs of tables the scripts create differ from run to run.
    text = re.sub(r"table=[1-9]\d*", "table=<oid>", text)
    return text


def lines_outcome(outdir: Path, rc, secs, timeout) -> Outcome:
    text = (outdir / "output.log").read_text(errors="replace")
    o = parse_lines(text)
    o.seconds = secs
    if rc is None:
        o.error = f"timed out after {timeout}s"
    elif "ALL CHECKS DONE" not in text:
        o.error = f"exit {rc} before finishing (see output.log)"
        o.failed.add("(program finished)")
    return o


def outcome_from_json(report: Path, rc, secs) -> Outcome:
    o = Outcome(seconds=secs)
    if report.exists():
        data = json.loads(report.read_text())
        o.passed, o.failed, o.skipped = set(data["passed"]), set(data["failed"]), set(data["skipped"])
        o.details = data.get("details", {})
    if rc is None:
        o.error = "timed out"
    elif not report.exists():
        o.error = f"no report (exit {rc})"
    return o


# --------------------------------------------------------------------------------------
# Fetching sources (registries only)


def venv_python() -> str:
    return str(CACHE / "venv" / "bin" / "python")


def unpack_sdist(name: str, version: str) -> Path:
    """The sdist from PyPI (`pip download --no-binary`), unpacked once into the cache."""
    dest = CACHE / f"{name}-{version}"
    if dest.exists():
        return dest
    dl = CACHE / "sdists"
    dl.mkdir(parents=True, exist_ok=True)
    tarball = dl / f"{name}-{version}.tar.gz"
    if not tarball.exists():
        run([venv_python(), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", dl,
             f"{name}=={version}"], timeout=300)
    run(["tar", "-xzf", tarball, "-C", CACHE], timeout=120)
    if not dest.exists():
        raise RuntimeError(f"{tarball} did not unpack to {dest}")
    return dest


def cargo_crate_source(name: str, version: str) -> Path:
    """The crate's published source as cargo unpacks it into ~/.cargo/registry/src,
    fetched through a throwaway crate that depends on it (`cargo fetch`)."""
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    found = sorted(home.glob(f"registry/src/*/{name}-{version}"))
    if not found:
        tmp = CACHE / f"fetch-{name}"
        (tmp / "src").mkdir(parents=True, exist_ok=True)
        (tmp / "Cargo.toml").write_text(f'[package]\nname = "fetch-{name}"\nversion = "0.0.0"\nedition = "2021"\n'
                                        f'[dependencies]\n{name} = "={version}"\n')
        (tmp / "src" / "lib.rs").write_text("")
        run(["cargo", "fetch"], cwd=tmp, env=base_env(), timeout=600)
        # cargo fetch downloads .crate files; unpacking happens on the first build.
        run(["cargo", "metadata", "--format-version=1"], cwd=tmp, env=base_env(), timeout=600)
        found = sorted(home.glob(f"registry/src/*/{name}-{version}"))
        if not found:
            crates = sorted(home.glob(f"registry/cache/*/{name}-{version}.crate"))
            if not crates:
                raise RuntimeError(f"cargo did not fetch {name} {version}")
            dest = CACHE / "crates"
            dest.mkdir(parents=True, exist_ok=True)
            run(["tar", "-xzf", crates[-1], "-C", dest])
            return dest / f"{name}-{version}"
    return found[-1]


# --------------------------------------------------------------------------------------
# Driver


# Suites in their own modules (suites/) use this module's helpers through `import runner`:
# make that name this very module when it runs as a script, or Python would load a
# second copy of it.
sys.modules.setdefault("runner", sys.modules[__name__])
from suites.django import Django  # noqa: E402
from suites.pgx import Pgx  # noqa: E402

# tokio-postgres first: one of its tests reads pg_database in heap order, which the other
# suites' CREATE/DROP DATABASE can change (see Env.setup_roles).
SUITES = [TokioPostgres, Psycopg2, Asyncpg, GoLibPq, Pgx, Jdbc, Node, Pgbench, Pgproto, Django]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="auto",
                    help="comma-separated pool modes to run through the proxies (session,transaction); "
                         "'auto' = every mode `rlsgate check-config` accepts")
    ap.add_argument("--suites", default="all", help="comma-separated suite names (default: all)")
    ap.add_argument("--no-pgbouncer", action="store_true", help="skip the PgBouncer reference runs")
    ap.add_argument("--no-rlsgate", action="store_true", help="direct (and PgBouncer) runs only, for debugging")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"), help="where to write the results table")
    ap.add_argument("--rereport", action="store_true",
                    help="no runs: rebuild the results from the last run's outcome.json files "
                         "(after editing expected-failures/)")
    args = ap.parse_args()

    if args.rereport:
        return rereport(args)
    started = time.monotonic()
    if not RLSGATE.exists():
        raise SystemExit(f"{RLSGATE} missing: cargo build --release")
    if RUN.exists():
        stop_stale_cluster(RUN / "pg")
        shutil.rmtree(RUN)
    RUN.mkdir(parents=True)
    os.chmod(WORK, 0o755)
    os.chmod(RUN, 0o755)

    pg = Postgres(RUN / "pg")
    pg.start()
    try:
        return drive(pg, args, started)
    finally:
        pg.stop()


def drive(pg: Postgres, args, started: float) -> int:
    env = Env(pg, args)
    env.setup_roles()
    log(f"PostgreSQL on 127.0.0.1:{pg.port}; work dir {RUN}")

    notes = []
    if args.modes == "auto":
        modes = []
        for mode in ALL_MODES:
            ok, msg = env.mode_supported(mode)
            if ok:
                modes.append(mode)
            else:
                notes.append(f"pool mode `{mode}` not run: `rlsgate check-config` refuses it ({msg.splitlines()[-1] if msg else 'no message'})")
                log(notes[-1])
    else:
        modes = [m for m in args.modes.split(",") if m]
        for m in modes:
            ok, msg = env.mode_supported(m)
            if not ok:
                raise SystemExit(f"rlsgate check-config refuses mode {m}: {msg}")
    wanted = None if args.suites == "all" else set(args.suites.split(","))
    suites = [cls(env) for cls in SUITES if wanted is None or cls.name in wanted]
    if wanted and wanted - {s.name for s in suites}:
        raise SystemExit(f"unknown suites: {wanted - {s.name for s in suites}}; known: {[c.name for c in SUITES]}")

    results = {}  # (suite, label) -> Outcome
    report_rows = []
    for suite in suites:
        sdir = RUN / suite.name
        sdir.mkdir(parents=True)
        log(f"== {suite.name}: preparing")
        try:
            suite.prepare()
        except Exception as e:  # noqa: BLE001 - reported, counted as a failed run
            log(f"{suite.name}: preparation failed: {e}")
            results[(suite.name, "direct")] = Outcome(error=f"preparation failed: {str(e)[:200]}")
            report_rows.append(suite)
            continue
        targets = [("direct", None)] + ([] if args.no_rlsgate else [("rlsgate", m) for m in modes])
        if not args.no_pgbouncer:
            targets += [("pgbouncer", m) for m in modes]
        for kind, mode in targets:
            label = kind if mode is None else f"{kind}:{mode}"
            outdir = sdir / label.replace(":", "-")
            o = run_target(env, suite, kind, mode, label, outdir)
            if kind == "rlsgate":
                o = retry_flaky(env, suite, mode, label, outdir, o, results.get((suite.name, "direct")))
            results[(suite.name, label)] = o
            (outdir / "outcome.json").write_text(json.dumps(o.to_json(), indent=1))
            log(f"{suite.name} via {label}: passed/failed/skipped {o.counts()} in {o.seconds:.0f}s"
                + (f" ({o.error})" if o.error else ""))
        report_rows.append(suite)

    elapsed = time.monotonic() - started
    (RUN / "run.json").write_text(json.dumps({"modes": modes, "notes": notes, "elapsed": elapsed,
                                              "suites": [s.name for s in report_rows], "rev": git_rev(),
                                              "when": time.strftime('%Y-%m-%d %H:%M %Z')}))
    return conclude(report_rows, modes, results, notes, elapsed, args)


def conclude(report_rows, modes, results, notes, elapsed, args) -> int:
    """Verdicts against expected-failures/, RESULTS.md, the summary line, the exit code."""
    verdicts = {}
    for suite in report_rows:
        expected = load_expected(suite.name)
        direct = results.get((suite.name, "direct"))
        for mode in modes:
            o = results.get((suite.name, f"rlsgate:{mode}"))
            verdicts[(suite.name, mode)] = verdict(suite.name, mode, direct, o, expected)
    write_results(Path(args.results), report_rows, modes, results, verdicts, notes, elapsed, args)
    (RUN / "results.json").write_text(json.dumps(
        {f"{s}|{l}": o.to_json() for (s, l), o in results.items()}, indent=1))
    log(f"wrote {args.results}; total {elapsed / 60:.1f} min")
    for (sname, mode), v in verdicts.items():
        for t, why in v["unexpected"]:
            print(f"UNEXPECTED {sname} rlsgate:{mode} {t}: {why[:300]}")
        for p in v["stale"]:
            print(f"stale expected failure {sname} {mode}: {p}")
    worse = worse_than_pgbouncer(report_rows, modes, results, verdicts)
    for sname, mode, ours, theirs in worse:
        print(f"WORSE THAN PGBOUNCER {sname} {mode}: rlsgate fails {ours} tests, PgBouncer {theirs}")
    total_pass = sum(len(o.passed) for (s, l), o in results.items() if l.startswith("rlsgate"))
    unexpected = sum(len(v["unexpected"]) for v in verdicts.values())
    print(f"clients: {total_pass} passed, {unexpected} failed, {len(worse)} rows worse than PgBouncer")
    return 1 if unexpected or worse else 0


def failures(o: "Outcome | None") -> int | None:
    """Failed tests of a run; a run that did not finish counts as failing everything it
    did not pass (so a timeout can never look better than a result)."""
    if o is None:
        return None
    if o.error:
        return max(len(o.failed), 1)
    return len(o.failed)


def worse_than_pgbouncer(suites, modes, results, verdicts) -> list[tuple[str, str, int, int]]:
    """Rows where rlsgate fails more tests than PgBouncer (issue 6: at or below in every
    row), not counting the failures documented as `BY DESIGN` in expected-failures/
    (refusals that keep tenants apart, such as the guard's SET ROLE refusal, which
    PgBouncer has no reason to make; every `BUG` counts). Rows without a PgBouncer run
    (--no-pgbouncer) are not compared."""
    out = []
    for s in suites:
        for mode in modes:
            ours = failures(results.get((s.name, f"rlsgate:{mode}")))
            theirs = failures(results.get((s.name, f"pgbouncer:{mode}")))
            if ours is None or theirs is None:
                continue
            v = verdicts.get((s.name, mode), {})
            by_design = sum(1 for _, why in v.get("explained", []) if why.startswith("BY DESIGN"))
            if ours - by_design > theirs:
                out.append((s.name, mode, ours, theirs))
    return out


def rereport(args) -> int:
    meta = json.loads((RUN / "run.json").read_text())
    RUN_META.update(meta)
    results = {}
    for sname in meta["suites"]:
        for d in sorted((RUN / sname).iterdir()):
            f = d / "outcome.json"
            if d.is_dir() and f.exists():
                data = json.loads(f.read_text())
                o = Outcome(set(data["passed"]), set(data["failed"]), set(data["skipped"]), data["error"],
                            data["seconds"], data.get("details", {}), set(data.get("flaky", [])),
                            data.get("first_error"))
                kind, _, mode = d.name.partition("-")
                results[(sname, f"{kind}:{mode}" if mode else kind)] = o
    suites = [cls(None) for cls in SUITES if cls.name in meta["suites"]]
    return conclude(suites, meta["modes"], results, meta["notes"], meta["elapsed"], args)


def verdict(suite: str, mode: str, direct: Outcome | None, o: Outcome | None, expected: list[Expected]) -> dict:
    """Tests failing through rlsgate but not directly, each with its documented reason, or
    listed as unexpected; and expected-failure lines that matched nothing (stale)."""
    v = {"explained": [], "unexpected": [], "stale": []}
    if direct is None or o is None:
        return v
    used = set()

    def explain(test: str, detail: str):
        for e in expected:
            if e.matches(mode, test, detail):
                used.add(id(e))
                return e.reason
        return None

    if direct.error and not (direct.passed or direct.failed):
        v["unexpected"].append(("(direct run)", direct.error))
        return v
    if o.error:
        why = explain("(run)", o.error)
        if why:
            v["explained"].append(("(run)", why))
        else:
            v["unexpected"].append(("(run)", o.error))
    # A test that passed directly and did not pass through rlsgate: failed, or never ran
    # (only counted when the run finished; a crashed run is reported as "(run)" above).
    newly = o.failed - direct.failed
    if not o.error:
        newly |= direct.passed - o.passed - o.skipped - o.failed
    for t in sorted(newly):
        detail = o.details.get(t, "")
        why = explain(t, detail)
        if why:
            v["explained"].append((t, why))
        else:
            v["unexpected"].append((t, detail or ("did not run" if t not in o.failed else "")))
    for e in expected:
        if e.applies_to(mode) and id(e) not in used and "flaky" not in e.reason and not e.common:
            v["stale"].append(e.pattern + (f' msg="{e.message}"' if e.message else ""))
    return v


def write_results(path: Path, suites, modes, results, verdicts, notes, elapsed, args) -> None:
    L = []
    L.append("# Real clients through rlsgate")
    L.append("")
    L.append("Generated by `integration/clients/run.sh` (runner.py); do not edit by hand.")
    L.append(f"Last run: {RUN_META.get('when') or time.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed / 60:.1f} minutes on {os.cpu_count()} cores; "
             f"PostgreSQL {pg_version()}, rlsgate {git_rev()}, PgBouncer {pgbouncer_version()}.")
    L.append("")
    L.append("Each cell is passed/failed/skipped. Direct = the suite against PostgreSQL as the same "
             "non-superuser role `suite` that rlsgate uses upstream (no RLS on the suites' tables). "
             "\"new failures\" = tests failing through rlsgate but not directly; each one is explained "
             "below from `expected-failures/<suite>.txt`. ⚠ = the run itself did not finish cleanly.")
    L.append("")
    for n in notes:
        L.append(f"- **Note:** {n}")
    if notes:
        L.append("")
    L.append("| suite | mode | direct | rlsgate | PgBouncer | rlsgate ≤ PgBouncer failures | new failures (rlsgate) | unexplained |")
    L.append("|---|---|---|---|---|---|---|---|")
    for s in suites:
        d = results.get((s.name, "direct"))
        for mode in modes:
            r = results.get((s.name, f"rlsgate:{mode}"))
            b = results.get((s.name, f"pgbouncer:{mode}"))
            v = verdicts.get((s.name, mode), {"explained": [], "unexpected": []})
            ours, theirs = failures(r), failures(b)
            # As the exit check (worse_than_pgbouncer): BY DESIGN refusals do not count.
            by_design = sum(1 for _, why in v["explained"] if why.startswith("BY DESIGN"))
            if ours is None or theirs is None:
                cmp = "-"
            elif ours <= theirs:
                cmp = "yes"
            elif ours - by_design <= theirs:
                cmp = f"yes ({by_design} by design)"
            else:
                cmp = "**NO**"
            L.append(f"| {s.name} | {mode} | {d.counts() if d else '-'} | {r.counts() if r else '-'} | "
                     f"{b.counts() if b else ('not run' if args.no_pgbouncer else '-')} | {cmp} | "
                     f"{len(v['explained']) + len(v['unexpected'])} | {len(v['unexpected'])} |")
    L.append("")
    L.append("## Failures through rlsgate that do not happen directly")
    L.append("")
    anything = False
    for s in suites:
        for mode in modes:
            v = verdicts.get((s.name, mode))
            if not v or not (v["explained"] or v["unexpected"]):
                continue
            anything = True
            L.append(f"### {s.name}, {mode} mode")
            L.append("")
            for t, why in v["unexpected"]:
                L.append(f"- `{t}` — **UNEXPECTED**: {why[:300]}")
            by_reason: dict[str, list[str]] = {}
            for t, why in v["explained"]:
                by_reason.setdefault(why, []).append(t)
            for why, tests in by_reason.items():
                if len(tests) <= 6:
                    L.append(f"- {', '.join(f'`{t}`' for t in tests)} — {why}")
                else:
                    L.append(f"- {len(tests)} tests — {why}")
                    L.append(f"  <details><summary>tests</summary>{', '.join(f'`{t}`' for t in tests)}</details>")
            L.append("")
    if not anything:
        L.append("None.")
        L.append("")
    flaky = [(s.name, mode, r) for s in suites for mode in modes
             if (r := results.get((s.name, f"rlsgate:{mode}"))) and (r.flaky or r.first_error)]
    if flaky:
        L.append("## Failed through rlsgate, then passed when the suite ran again (flaky)")
        L.append("")
        L.append("A run with unexplained failures runs once more; a test counts as failing only if it "
                 "fails both times. These failed only the first time:")
        L.append("")
        for sname, mode, r in flaky:
            what = ", ".join(f"`{t}`" for t in sorted(r.flaky)) or "(no single test)"
            extra = f" (first run: {r.first_error[:200]})" if r.first_error else ""
            L.append(f"- {sname}, {mode}: {what}{extra}")
        L.append("")
    stale = [(s.name, mode, p) for s in suites for mode in modes for p in verdicts.get((s.name, mode), {}).get("stale", [])]
    if stale:
        L.append("## Expected failures that did not fail (stale: remove them if the fix is real)")
        L.append("")
        for sname, mode, p in stale:
            L.append(f"- {sname}, {mode}: `{p}`")
        L.append("")
    L.append("## Failing directly (environment, not the proxy)")
    L.append("")
    for s in suites:
        d = results.get((s.name, "direct"))
        if d and (d.failed or d.error):
            L.append(f"- {s.name}: " + ", ".join(f"`{t}`" for t in sorted(d.failed)[:30])
                     + (f" (run: {d.error})" if d.error else ""))
    L.append("")
    L.append("## PgBouncer failures that rlsgate does not have")
    L.append("")
    for s in suites:
        for mode in modes:
            d, r, b = (results.get((s.name, k)) for k in ("direct", f"rlsgate:{mode}", f"pgbouncer:{mode}"))
            if d and r and b:
                only = sorted((b.failed - d.failed) - r.failed)
                if only:
                    L.append(f"- {s.name}, {mode}: {len(only)} — " + ", ".join(f"`{t}`" for t in only[:15])
                             + (" …" if len(only) > 15 else ""))
    L.append("")
    L.append("## Timings (seconds)")
    L.append("")
    L.append("| suite | " + " | ".join(["direct"] + [f"rlsgate {m}" for m in modes] + [f"PgBouncer {m}" for m in modes]) + " |")
    L.append("|---|" + "---|" * (1 + 2 * len(modes)))
    for s in suites:
        cells = []
        for label in ["direct"] + [f"rlsgate:{m}" for m in modes] + [f"pgbouncer:{m}" for m in modes]:
            o = results.get((s.name, label))
            cells.append(f"{o.seconds:.0f}" if o else "-")
        L.append(f"| {s.name} | " + " | ".join(cells) + " |")
    L.append("")
    path.write_text("\n".join(L))


def pg_version() -> str:
    p = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True)
    m = re.search(r"\(PostgreSQL\) (\S+)", p.stdout)
    return m.group(1) if m else "?"


def pgbouncer_version() -> str:
    p = subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True)
    return p.stdout.split("\n")[0].split()[-1] if p.returncode == 0 else "?"


RUN_META: dict = {}  # set by --rereport: the revision and time of the run being reported


def git_rev() -> str:
    if "rev" in RUN_META:
        return RUN_META["rev"]
    p = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return p.stdout.strip() or "?"


def run_target(env, suite, kind, mode, label, outdir) -> "Outcome":
    """One run of `suite` against a fresh database, directly or through a proxy."""
    outdir.mkdir(parents=True)
    env.reset_db(suite.db, suite.extensions)
    suite.after_reset()
    ep = None
    try:
        if kind == "direct":
            ep = env.direct(suite.db)
        elif kind == "rlsgate":
            ep = env.start_rlsgate(suite.db, mode, outdir)
        else:
            ep = env.start_pgbouncer(suite.db, mode, outdir)
        log(f"{suite.name} via {label} (port {ep.port})")
        o = suite.run(ep, outdir)
    except Exception as e:  # noqa: BLE001
        o = Outcome(error=f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        if ep is not None:
            ep.stop()
    if ep is not None and ep.proc is None and ep.logfile and ep.kind == "rlsgate":
        panics = [l for l in ep.logfile.read_text(errors="replace").splitlines() if "panicked" in l]
        if panics:
            o.error = (o.error + "; " if o.error else "") + f"rlsgate panicked: {panics[0][:200]}"
    return o


def retry_flaky(env, suite, mode, label, outdir, o: "Outcome", direct: "Outcome | None") -> "Outcome":
    """A run through rlsgate with unexplained failures runs once more (in `retry/`); a
    test counts as failing only if it fails both times. Tests that passed on the retry
    are kept in `flaky` and listed in RESULTS.md, so flakiness stays visible without
    failing CI on a timing accident. A panic is never retried away."""
    v = verdict(suite.name, mode, direct, o, load_expected(suite.name))
    if not v["unexpected"] or (o.error and "panicked" in o.error):
        return o
    log(f"{suite.name} via {label}: {len(v['unexpected'])} unexplained, running once more")
    o2 = run_target(env, suite, "rlsgate", mode, label, outdir / "retry")
    if o2.error and "panicked" in o2.error:
        o.error = (o.error + "; " if o.error else "") + o2.error
        return o
    if o.error and not o2.error:
        o2.first_error = o.error
        o2.flaky = o.failed - o2.failed
        o2.seconds += o.seconds
        return o2
    o.flaky = o.failed - o2.failed
    o.failed &= o2.failed
    o.passed |= o.flaky
    o.seconds += o2.seconds
    if o.error and o2.error:
        o.error = f"{o.error} (and on the retry: {o2.error})"
    return o


if __name__ == "__main__":
    sys.exit(main())
