"""The `pgx` suite: Go pgx v4's own tests as Debian ships them, built offline in GOPATH mode."""

# Debian's golang-github-jackc-pgx-v4-dev puts the sources (tests included) under
# /usr/share/gocode, with every dependency packaged the same way, so the tests build
# with GO111MODULE=off and GOPROXY=off: no module download at all (lib/pq's go.mod has
# no requirements, so `lib-pq` builds in module mode; pgx's go.mod has fifteen).
# The package tree is copied into a GOPATH of our own first (Go writes nothing under
# /usr/share/gocode, but the copy keeps the build independent of that directory's other
# contents shadowing ours). Each test package is compiled once per run into a binary;
# each target then runs the binaries under `go tool test2json` for per-test outcomes.

from __future__ import annotations

import json
import shutil
from pathlib import Path

import runner
from runner import CACHE, Outcome, base_env, log, run, run_logged

PGX_VERSION = "4.15.0"  # Debian bookworm's golang-github-jackc-pgx-v4-dev 4.15.0-4
GOCODE = Path("/usr/share/gocode")
IMPORT = "github.com/jackc/pgx/v4"
# The packages that have tests; only the first three talk to a database.
PACKAGES = ("", "pgxpool", "stdlib", "internal/sanitize", "log/zerologadapter")


class Pgx(runner.Suite):
    name, title, db = "pgx", f"Go pgx {PGX_VERSION} tests (Debian golang-github-jackc-pgx-v4-dev)", "pgx_test"
    # What pgx's own CI prepares (travis/before_script.bash upstream): hstore and the
    # domain `uint64` (after_reset).
    extensions = ("hstore",)
    timeout = 150  # the whole suite run, every package in turn (~20 s directly, ~35 s through rlsgate)
    PACKAGE_TIMEOUT = 90  # go's -test.timeout per binary (it panics the binary): PgBouncer in
    # transaction mode hangs in TestConnSendBatchMany until then

    def prepare(self):
        src = GOCODE / "src" / IMPORT
        if not src.exists():
            raise SystemExit(f"{src} missing: apt-get install -y golang-github-jackc-pgx-v4-dev "
                             "golang-github-masterminds-semver-dev")
        gopath = CACHE / "pgx-gopath"
        if gopath.exists():
            shutil.rmtree(gopath)
        shutil.copytree(src, gopath / "src" / IMPORT, symlinks=False)
        self.goenv = base_env() | {"GOPATH": f"{gopath}:{GOCODE}", "GOCACHE": str(CACHE / "gocache"),
                                   "GO111MODULE": "off", "GOPROXY": "off", "GOFLAGS": "",
                                   "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        bindir = CACHE / "pgx-bin"
        bindir.mkdir(exist_ok=True)
        self.binaries = {}
        log("building pgx tests (the Go build cache keeps this short after the first run)")
        for pkg in PACKAGES:
            label = pkg or "pgx"
            binary = bindir / (label.replace("/", "_") + ".test")
            run(["go", "test", "-count=1", "-c", "-o", binary, f"{IMPORT}/{pkg}".rstrip("/")],
                env=self.goenv, cwd=gopath / "src" / IMPORT / pkg, timeout=900)
            self.binaries[pkg] = binary

    def after_reset(self):
        # Owned by the suite role like everything else in the database.
        self.env.pg.psql(self.db, "CREATE DOMAIN uint64 AS numeric(20,0);\n"
                                  f"ALTER DOMAIN uint64 OWNER TO {runner.SUITE_ROLE};")

    def run(self, ep, outdir):
        conn = (f"host={ep.host} port={ep.port} user={ep.user} password={ep.password} "
                f"dbname={ep.dbname} sslmode=disable")
        # pgbouncer_test.go runs its two tests (describe-mode statement cache, simple
        # protocol; 10 connections each) only when this is set: every target gets them.
        env = self.goenv | {"PGX_TEST_DATABASE": conn, "PGX_TEST_PGBOUNCER_CONN_STRING": conn}
        o = Outcome()
        readable = []
        for pkg, binary in self.binaries.items():
            label = pkg or "pgx"
            events = outdir / f"{label.replace('/', '_')}.jsonl"
            # The binary runs in its package directory, as `go test` runs it.
            cwd = CACHE / "pgx-gopath" / "src" / IMPORT / pkg
            left = self.timeout - o.seconds
            if left < 20:
                o.error = f"timed out after {self.timeout}s (before package {label})"
                break
            rc, secs = run_logged(["go", "tool", "test2json", "-p", label, binary, "-test.v", "-test.count=1",
                                   f"-test.timeout={min(self.PACKAGE_TIMEOUT, int(left) - 10)}s"],
                                  env=env, cwd=cwd, timeout=left, logfile=events)
            o.seconds += secs
            prefix = "" if not pkg else pkg.rsplit("/", 1)[-1] + "."
            failed_before = len(o.failed)
            readable.append(parse_test2json(events, prefix, o))
            if rc is None:
                o.error = f"timed out after {self.timeout}s (package {label})"
                break
            if rc != 0 and len(o.failed) == failed_before:
                o.error = f"package {label}: exit {rc} without a failing test (panic or build error?)"
        (outdir / "output.log").write_text("".join(readable))
        return o


def parse_test2json(path: Path, prefix: str, o: Outcome) -> str:
    """Adds the top-level tests' outcomes from `go tool test2json` events to `o` (names
    `prefix + Test`; subtests count inside their test) and returns the plain output."""
    text = []
    output: dict[str, list[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            text.append(line + "\n")  # run_logged's "$ cmd" line
            continue
        test, action = ev.get("Test"), ev.get("Action")
        if action == "output":
            text.append(ev.get("Output", ""))
            if test:
                output.setdefault(test.split("/", 1)[0], []).append(ev.get("Output", ""))
        if not test or "/" in test or action not in ("pass", "fail", "skip"):
            continue
        name = prefix + test
        o.passed.discard(name)
        {"pass": o.passed, "fail": o.failed, "skip": o.skipped}[action].add(name)
        if action == "fail":
            lines = [l.strip() for l in output.get(test, [])
                     if l.strip() and not l.lstrip().startswith(("=== ", "--- "))]
            o.details[name] = " ".join(lines)[:1000]
    return "".join(text)
