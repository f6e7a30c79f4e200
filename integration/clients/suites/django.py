"""The `django` suite: Django's own test suite (tests/runtests.py from the sdist) on its PostgreSQL backend."""

# Two databases, `default` and `other` (Django's multi-database tests use both), each
# behind its own endpoint, since one rlsgate instance serves one database: through a
# proxy the runner starts a second instance (same kind and mode) for `other`. How the
# aliases are pinned to their databases, maintenance connection included, is explained
# in lib/django_settings.py. The apps, versions and times are in README.md.

from __future__ import annotations

import os

import runner
from runner import CACHE, HERE, base_env, log, outcome_from_json, run, run_logged, venv_python

DJANGO_VERSION = "5.2.19"  # the 5.2 LTS; run.sh installs the same in the venv's requirements
APPS = ("backends", "transactions", "select_for_update", "queries", "model_fields", "postgres_tests",
        "migrations")
# postgres_tests' first migration creates these (bloom is not a trusted extension, so
# the non-superuser role could not); created in both databases as superuser, for every
# target alike. Its CreateExtension operation skips extensions that exist.
EXTENSIONS = ("bloom", "btree_gin", "btree_gist", "citext", '"uuid-ossp"', "hstore", "pg_trgm", "unaccent")


class Django(runner.Suite):
    name, title, db = "django", f"Django {DJANGO_VERSION} test suite (PostgreSQL backend)", "test_django"
    other_db = "test_django_other"
    extensions = EXTENSIONS
    timeout = 300  # the whole runtests.py run (~50-90 s); one test alone is stopped after 60 s
    TEST_TIMEOUT = 60

    def prepare(self):
        self.src = unpack_django()
        run([venv_python(), "-c", "import psycopg, sqlparse, asgiref"], env=base_env(), timeout=60)

    def after_reset(self):
        # reset_db recreated `test_django` and dropped every other database of the suite
        # role: the second one comes back the same way.
        pg = self.env.pg
        pg.psql("template1", f"DROP DATABASE IF EXISTS {self.other_db} WITH (FORCE);")
        pg.psql("template1", f"CREATE DATABASE {self.other_db} OWNER {runner.SUITE_ROLE};")
        for ext in self.extensions:
            pg.psql(self.other_db, f"CREATE EXTENSION IF NOT EXISTS {ext};")

    def other_endpoint(self, ep: runner.Endpoint, outdir) -> runner.Endpoint:
        """The endpoint for `other`: the same kind (and pool mode) as `ep`."""
        if ep.kind == "direct":
            return self.env.direct(self.other_db)
        d = outdir / "other"
        d.mkdir(exist_ok=True)
        if ep.kind == "rlsgate":
            return self.env.start_rlsgate(self.other_db, ep.mode, d)
        return self.env.start_pgbouncer(self.other_db, ep.mode, d)

    def run(self, ep, outdir):
        other = self.other_endpoint(ep, outdir)
        report = outdir / "report.json"
        env = base_env() | {
            "CLIENTS_DJANGO_USER": ep.user, "CLIENTS_DJANGO_PASSWORD": ep.password,
            "CLIENTS_DJANGO_REPORT": str(report), "UNITTEST_TEST_TIMEOUT": str(self.TEST_TIMEOUT),
            "PYTHONPATH": f"{self.src}{os.pathsep}{HERE / 'lib'}",
        }
        for alias, e in (("DEFAULT", ep), ("OTHER", other)):
            env |= {f"CLIENTS_DJANGO_{alias}_HOST": e.host, f"CLIENTS_DJANGO_{alias}_PORT": str(e.port),
                    f"CLIENTS_DJANGO_{alias}_NAME": e.dbname}
        try:
            rc, secs = run_logged(
                [venv_python(), "runtests.py", "--settings=django_settings", "--keepdb", "--parallel", "1",
                 "--verbosity", "2", "--noinput", *APPS],
                env=env, cwd=self.src / "tests", timeout=self.timeout, logfile=outdir / "output.log")
        finally:
            other.stop()
        o = outcome_from_json(report, rc, secs)
        if rc is None:
            o.error = f"timed out after {self.timeout}s"
        if other.kind == "rlsgate" and other.logfile:
            # run_target looks for panics in the first instance's log only.
            panics = [l for l in other.logfile.read_text(errors="replace").splitlines() if "panicked" in l]
            if panics:
                o.error = (o.error + "; " if o.error else "") + f"rlsgate (other) panicked: {panics[0][:200]}"
        return o


def unpack_django():
    """Django's sdist from PyPI, unpacked once into the cache. (runner.unpack_sdist
    expects the tarball and its directory to be spelled alike; Django's are
    `Django-X.tar.gz` and `django-X/`.)"""
    dest = CACHE / f"django-{DJANGO_VERSION}"
    if (dest / "tests" / "runtests.py").exists():
        return dest
    dl = CACHE / "sdists"
    dl.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(dl.glob(f"[Dd]jango-{DJANGO_VERSION}.tar.gz"))
    if not tarballs:
        log(f"downloading the Django {DJANGO_VERSION} sdist")
        run([venv_python(), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", dl,
             f"Django=={DJANGO_VERSION}"], timeout=300)
        tarballs = sorted(dl.glob(f"[Dd]jango-{DJANGO_VERSION}.tar.gz"))
    if not tarballs:
        raise RuntimeError(f"pip did not download the Django {DJANGO_VERSION} sdist into {dl}")
    run(["tar", "-xzf", tarballs[-1], "-C", CACHE], timeout=120)
    if not (dest / "tests" / "runtests.py").exists():
        raise RuntimeError(f"{tarballs[-1]} did not unpack to {dest}")
    return dest
