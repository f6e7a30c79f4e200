#!/usr/bin/env python3
"""Starts the runner's environment by hand, for reproducing a failure interactively:
PostgreSQL (role `suite`, database DB), rlsgate in front of it, optionally PgBouncer.
Prints the connection settings as shell exports and waits for Ctrl-C (or --seconds).

usage: lib/devenv.py [--db suite_dev] [--mode session|transaction] [--pgbouncer] [--seconds N]
       (RLSGATE_CLIENTS_WORK is honoured; this uses its own run directory: <work>/devenv)
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import runner  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="suite_dev")
    ap.add_argument("--mode", default="session")
    ap.add_argument("--pgbouncer", action="store_true")
    ap.add_argument("--seconds", type=float, default=0)
    a = ap.parse_args()
    # SIGTERM stops everything like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    runner.RUN = runner.WORK / "devenv"
    runner.RUN.mkdir(parents=True, exist_ok=True)
    os.chmod(runner.RUN, 0o755)
    pg = runner.Postgres(runner.RUN / "pg")
    pg.start()
    eps = []
    try:
        env = runner.Env(pg, a)
        env.setup_roles()
        env.reset_db(a.db)
        logdir = runner.RUN / "logs"
        logdir.mkdir(exist_ok=True)
        direct = env.direct(a.db)
        eps.append(env.start_rlsgate(a.db, a.mode, logdir))
        if a.pgbouncer:
            eps.append(env.start_pgbouncer(a.db, a.mode, logdir))
        for ep in [direct] + eps:
            print(f"# {ep.label}: " + " ".join(f"{k}={v}" for k, v in ep.libpq_env().items()))
        print(f"# rlsgate log: {eps[0].logfile}")
        print(f"# superuser: psql -h {pg.sock} -p {pg.port} -U postgres {a.db}", flush=True)
        deadline = time.monotonic() + a.seconds if a.seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for ep in eps:
            ep.stop()
        pg.stop()


if __name__ == "__main__":
    main()
