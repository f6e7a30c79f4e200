#!/usr/bin/env python3
"""Helper for bench/run.sh (standard library only).

Subcommands:
  freeports N                 print N free loopback TCP ports
  pgbench  --out JSONL ...    run one pgbench command, measure it, append a JSON record
  idle     --out JSONL ...    open N idle client connections, measure the proxy's RSS
  report   --dir RUNDIR ...   turn the records into the markdown report + docs summary
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- helpers

def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def proc_cpu_seconds(pid):
    """utime + stime of one process, in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_cpu():
    """(busy, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


def parse_pgbench(text):
    def num(pattern):
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else None

    return {
        "tps": num(r"^tps = ([\d.]+)"),
        "latency_ms": num(r"^latency average = ([\d.]+) ms"),
        "latency_stddev_ms": num(r"^latency stddev = ([\d.]+) ms"),
        "conn_ms": num(r"^average connection time = ([\d.]+) ms")
        or num(r"^initial connection time = ([\d.]+) ms"),
        "transactions": num(r"^number of transactions actually processed: (\d+)"),
        "failed": num(r"^number of failed transactions: (\d+)"),
        "aborted": "Run was aborted" in text,
    }


def error_lines(text, limit=6):
    """Distinct error messages (client numbers and statement names folded together)."""
    out, seen = [], set()
    for line in text.splitlines():
        low = line.lower()
        if not ("error" in low or "fatal" in low or "aborted" in low or "could not" in low):
            continue
        if line.startswith("number of failed"):
            continue
        key = re.sub(r"(pgbench: )+", "", line)
        key = re.sub(r"client \d+", "client N", key)
        key = re.sub(r'"P_\d+"', '"P_n"', key)
        if key not in seen:
            seen.add(key)
            out.append(line)
        if len(out) >= limit:
            break
    return out


# --------------------------------------------------------------------------- pgbench

def cmd_pgbench(a):
    env = dict(os.environ)
    for kv in a.env or []:
        k, v = kv.split("=", 1)
        env[k] = v
    pids = [int(p) for p in (a.pid or [])]
    cpu0 = {p: proc_cpu_seconds(p) for p in pids}
    m0 = machine_cpu()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        p = subprocess.run(a.cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=a.timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m1 = machine_cpu()
    rec = {
        "kind": "pgbench",
        "target": a.target,
        "workload": a.workload,
        "round": a.round,
        "rc": rc,
        "wall_s": round(wall, 2),
        "pgbench_cpu_s": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 2),
        "machine_busy_pct": round(100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]), 1),
        "command": a.show or " ".join(a.cmd),
        "errors": error_lines(err + "\n" + out),
    }
    rec.update(parse_pgbench(out))
    proxy_cpu = 0.0
    for pid in pids:
        c1 = proc_cpu_seconds(pid)
        if c1 is not None and cpu0[pid] is not None:
            proxy_cpu += c1 - cpu0[pid]
    if pids:
        rec["proxy_cpu_s"] = round(proxy_cpu, 2)
        rec["proxy_cpu_pct"] = round(100.0 * proxy_cpu / wall, 1)
        rec["proxy_hwm_kb"] = proc_status_kb(pids[0], "VmHWM")
        if rec.get("transactions"):
            rec["proxy_cpu_us_per_txn"] = round(1e6 * proxy_cpu / rec["transactions"], 1)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    with open(os.path.join(os.path.dirname(a.out), "pgbench.log"), "a") as f:
        f.write(f"===== {a.target} / {a.workload} rc={rc}\n$ {rec['command']}\n{out}\n{err}\n")
    status = "ok" if rc == 0 and not rec["aborted"] else f"FAILED rc={rc}"
    print(f"  {a.target:22s} {a.workload:18s} tps={rec['tps']} lat={rec['latency_ms']}ms "
          f"proxy_cpu={rec.get('proxy_cpu_pct', '-')}% {status}"
          + (f"  [{rec['errors'][0]}]" if rec["errors"] and status != "ok" else ""),
          flush=True)


# --------------------------------------------------------------------------- idle clients

class PgConnError(Exception):
    pass


def _recv_msg(sock):
    def recv_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise PgConnError("connection closed by server")
            buf += chunk
        return buf

    head = recv_exact(5)
    tag, length = head[:1], struct.unpack("!I", head[1:])[0]
    return tag, recv_exact(length - 4)


def _send(sock, tag, payload):
    sock.sendall(tag + struct.pack("!I", len(payload) + 4) + payload)


def pg_connect(port, user, db, password, timeout):
    """Minimal frontend: startup + cleartext/MD5/SCRAM-SHA-256 auth, up to ReadyForQuery."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    body = struct.pack("!I", 196608) + params
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    scram = None
    while True:
        tag, data = _recv_msg(sock)
        if tag == b"E":
            fields = dict((f[:1].decode(), f[1:].decode(errors="replace"))
                          for f in data.split(b"\0") if f)
            raise PgConnError(f"{fields.get('C')}: {fields.get('M')}")
        if tag == b"Z":
            return sock
        if tag != b"R":
            continue
        code = struct.unpack("!I", data[:4])[0]
        if code == 0:
            continue
        if code == 3:
            _send(sock, b"p", password.encode() + b"\0")
        elif code == 5:
            salt = data[4:8]
            inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + salt).hexdigest()
            _send(sock, b"p", b"md5" + outer.encode() + b"\0")
        elif code == 10:
            nonce = base64.b64encode(os.urandom(18)).decode()
            bare = f"n=,r={nonce}"
            first = ("n,," + bare).encode()
            _send(sock, b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            scram = {"bare": bare, "nonce": nonce}
        elif code == 11:
            server_first = data[4:].decode()
            attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
            if not attrs["r"].startswith(scram["nonce"]):
                raise PgConnError("SCRAM nonce mismatch")
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(),
                                         base64.b64decode(attrs["s"]), int(attrs["i"]))
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            stored = hashlib.sha256(client_key).digest()
            without_proof = "c=biws,r=" + attrs["r"]
            auth_msg = ",".join([scram["bare"], server_first, without_proof]).encode()
            sig = hmac.new(stored, auth_msg, hashlib.sha256).digest()
            proof = bytes(x ^ y for x, y in zip(client_key, sig))
            _send(sock, b"p", (without_proof + ",p=" + base64.b64encode(proof).decode()).encode())
        elif code == 12:
            continue
        else:
            raise PgConnError(f"unsupported auth request {code}")


def cmd_idle(a):
    pid = int(a.pid)
    time.sleep(0.5)
    rss0 = proc_status_kb(pid, "VmRSS")
    socks, errors = [], []
    lock = threading.Lock()

    def one():
        try:
            s = pg_connect(a.port, a.user, a.db, a.password, a.timeout)
            with lock:
                socks.append(s)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            with lock:
                errors.append(str(e) or type(e).__name__)

    t0 = time.monotonic()
    threads = []
    for _ in range(a.n):
        t = threading.Thread(target=one, daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.002)
    for t in threads:
        t.join(a.timeout + 5)
    open_s = time.monotonic() - t0
    time.sleep(a.hold)
    rss1 = proc_status_kb(pid, "VmRSS")
    # prove the idle connections are alive: one query on the last one
    alive = None
    if socks:
        try:
            _send(socks[-1], b"Q", b"SELECT count(*) FROM pgbench_accounts\0")
            while True:
                tag, data = _recv_msg(socks[-1])
                if tag == b"D":
                    n = struct.unpack("!h", data[:2])[0]
                    ln = struct.unpack("!i", data[2:6])[0]
                    alive = data[6:6 + ln].decode()
                if tag == b"E":
                    alive = "error: " + data.decode(errors="replace").replace("\0", " ")
                if tag == b"Z":
                    break
        except Exception as e:  # noqa: BLE001
            alive = f"error: {e}"
    for s in socks:
        try:
            _send(s, b"X", b"")
            s.close()
        except OSError:
            pass
    uniq = sorted(set(errors))
    rec = {
        "kind": "idle",
        "target": a.target,
        "requested": a.n,
        "opened": len(socks),
        "failed": len(errors),
        "errors": [f"{errors.count(e)}x {e}" for e in uniq][:4],
        "open_s": round(open_s, 2),
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "hwm_kb": proc_status_kb(pid, "VmHWM"),
        "last_conn_count_accounts": alive,
    }
    if rss0 and rss1 and socks:
        rec["kb_per_conn"] = round((rss1 - rss0) / len(socks), 1)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  {a.target:22s} idle x{a.n}: opened={len(socks)} failed={len(errors)} "
          f"rss {rss0} -> {rss1} kB {rec['errors'][:1]}", flush=True)


# --------------------------------------------------------------------------- report

TARGETS = [
    ("direct", "direct PG"),
    ("pgbouncer-session", "PgBouncer session"),
    ("pgbouncer-transaction", "PgBouncer txn"),
    ("rlsgate-session", "rlsgate session"),
    ("rlsgate-transaction", "rlsgate txn"),
]
RATIOS = [
    ("rlsgate-session", "direct", "rlsgate session / direct"),
    ("rlsgate-transaction", "direct", "rlsgate txn / direct"),
    ("rlsgate-session", "pgbouncer-session", "rlsgate session / PgBouncer session"),
    ("rlsgate-transaction", "pgbouncer-transaction", "rlsgate txn / PgBouncer txn"),
]


def ok(rec):
    return rec and rec.get("rc") == 0 and not rec.get("aborted") and rec.get("tps") is not None


def aggregate(recs):
    """One record per (target, workload) from its rounds: mean TPS/latency, spread, sums."""
    groups = {}
    for r in recs:
        if r["kind"] == "pgbench":
            groups.setdefault((r["target"], r["workload"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        bad = [r for r in rs if not ok(r)]
        agg = dict(rs[0])
        agg["rounds"] = len(rs)
        if bad:
            agg.update(bad[0])
            agg["rounds"] = len(rs)
            out[key] = agg
            continue
        tps = [r["tps"] for r in rs]
        agg["tps"] = sum(tps) / len(tps)
        agg["latency_ms"] = sum(r["latency_ms"] for r in rs) / len(rs)
        agg["spread_pct"] = 100.0 * (max(tps) - min(tps)) / agg["tps"] if len(rs) > 1 else None
        agg["transactions"] = sum(r["transactions"] or 0 for r in rs)
        agg["machine_busy_pct"] = round(sum(r["machine_busy_pct"] for r in rs) / len(rs), 1)
        if rs[0].get("proxy_cpu_s") is not None:
            cpu = sum(r["proxy_cpu_s"] for r in rs)
            wall = sum(r["wall_s"] for r in rs)
            agg["proxy_cpu_pct"] = round(100.0 * cpu / wall, 1)
            agg["proxy_cpu_us_per_txn"] = (round(1e6 * cpu / agg["transactions"], 1)
                                           if agg["transactions"] else None)
        out[key] = agg
    return out


def fmt_cell(rec):
    if rec is None:
        return "—"
    if not ok(rec):
        return "**error**"
    spread = rec.get("spread_pct")
    sp = f" (±{spread / 2:.0f}%)" if spread is not None else ""
    return f"{rec['tps']:,.0f}{sp} / {rec['latency_ms']:.3f} ms"


def fmt_ratio(a, b):
    if not (ok(a) and ok(b)) or not b["tps"]:
        return "—"
    return f"{a['tps'] / b['tps']:.2f}"


def load(path):
    recs = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    recs.append(json.loads(line))
    return recs


def tables(recs, workloads):
    by = aggregate(recs)
    lines = []
    lines.append("Throughput and average latency (mean TPS over the rounds, ± half the min–max "
                 "spread between rounds / mean avg latency; higher TPS is better):\n")
    lines.append("| workload | " + " | ".join(n for _, n in TARGETS) + " |")
    lines.append("|---|" + "---:|" * len(TARGETS))
    for w in workloads:
        lines.append(f"| {w} | " + " | ".join(fmt_cell(by.get((t, w))) for t, _ in TARGETS) + " |")
    lines.append("\nTPS ratios (1.00 = same throughput; below 1 = rlsgate slower):\n")
    lines.append("| workload | " + " | ".join(n for _, _, n in RATIOS) + " |")
    lines.append("|---|" + "---:|" * len(RATIOS))
    for w in workloads:
        lines.append(f"| {w} | " + " | ".join(
            fmt_ratio(by.get((x, w)), by.get((y, w))) for x, y, _ in RATIOS) + " |")
    return lines, by


def cmd_report(a):
    run_dir = a.dir
    meta = json.load(open(os.path.join(run_dir, "meta.json")))
    recs = load(os.path.join(run_dir, "results.jsonl"))
    workloads = []
    for r in recs:
        if r["kind"] == "pgbench" and r["workload"] not in workloads:
            workloads.append(r["workload"])
    tbl, by = tables(recs, workloads)

    proxies = [t for t, _ in TARGETS if t != "direct"]
    cpu = ["Proxy CPU during each run (% of one core / µs of proxy CPU per transaction) and "
           "whole-machine CPU busy % (2 cores = 200% of a core → shown as 0–100 %):\n",
           "| workload | " + " | ".join(n for t, n in TARGETS if t != "direct")
           + " | machine busy % (direct … rlsgate txn) |",
           "|---|" + "---:|" * len(proxies) + "---|"]
    for w in workloads:
        cells = []
        for t in proxies:
            r = by.get((t, w))
            if r is None or r.get("proxy_cpu_pct") is None:
                cells.append("—")
            else:
                per = r.get("proxy_cpu_us_per_txn")
                cells.append(f"{r['proxy_cpu_pct']:.0f}% / {per:.0f} µs" if per else
                             f"{r['proxy_cpu_pct']:.0f}% / —")
        busy = " · ".join(str(by[(t, w)]["machine_busy_pct"]) if (t, w) in by else "—"
                          for t, _ in TARGETS)
        cpu.append(f"| {w} | " + " | ".join(cells) + f" | {busy} |")

    mem = ["| process | RSS after start | peak RSS (VmHWM) over all runs | idle clients opened "
           "| RSS with idle clients | per idle client |",
           "|---|---:|---:|---:|---:|---:|"]
    idle = {r["target"]: r for r in recs if r["kind"] == "idle"}
    memrec = {r["target"]: r for r in recs if r["kind"] == "mem"}
    for t, n in TARGETS:
        if t == "direct":
            continue
        m = memrec.get(t, {})
        i = idle.get(t, {})
        def kb(v):
            return f"{v / 1024:.1f} MiB" if isinstance(v, (int, float)) else "—"
        opened = (f"{i.get('opened')}/{i.get('requested')}" if i else "—")
        if i.get("failed"):
            opened += f" ({'; '.join(i.get('errors', []))})"
        per = f"{i['kb_per_conn']:.1f} kB" if i.get("kb_per_conn") is not None else "—"
        mem.append(f"| {n} | {kb(m.get('rss_start_kb'))} | {kb(m.get('hwm_end_kb'))} | "
                   f"{opened} | {kb(i.get('rss_after_kb'))} | {per} |")

    failures = []
    for r in recs:
        if r["kind"] == "pgbench" and not ok(r):
            known = ""
            if r["target"] == "pgbouncer-transaction" and r["workload"] == "read-prepared":
                known = (" Expected: PgBouncer before 1.21 does not support protocol-level "
                         "prepared statements in transaction pooling.")
            done = int(r["transactions"]) if r.get("transactions") is not None else "no"
            failures.append(f"- **{r['target']} / {r['workload']}** (round {r.get('round')}, exit "
                            f"{r['rc']}, {done} transactions done before the abort).{known} "
                            f"`{r['command']}`")
            for e in r.get("errors", [])[:4]:
                failures.append(f"  - `{e.strip()}`")
    for r in recs:
        if r["kind"] == "idle" and r.get("failed"):
            failures.append(f"- **{r['target']} / {r['requested']} idle clients**: "
                            f"{r['failed']} failed: {'; '.join(r['errors'])}")

    def lines_of(name):
        path = os.path.join(run_dir, name)
        return [l.rstrip("\n") for l in open(path)] if os.path.exists(path) else []
    checks = lines_of("checks.txt")
    meta["setup"] = lines_of("setup.txt")
    md = []
    md.append(f"# rlsgate benchmark — {meta['date']}\n")
    md.append(f"Produced by `{meta['command']}` (git `{meta['git']}`), total wall time "
              f"{meta.get('elapsed_s', '?')} s.\n")
    md.append("## Machine\n")
    md.append(f"- CPU: {meta['cpu_model']}, `nproc` = {meta['nproc']}, RAM {meta['mem_total']}")
    md.append(f"- Kernel: {meta['kernel']}")
    md.append(f"- Load average (1/5/15 min): {meta.get('load', '?')} — the machine is shared; "
              "other jobs running at the same time take CPU from all targets alike but add noise.")
    md.append(f"- {meta['pg_version']}; {meta['pgbench_version']}; {meta['pgbouncer_version']}; "
              f"{meta['rlsgate_version']} (release build)")
    md.append(f"- **Everything runs on these {meta['nproc']} cores**: pgbench (client), the proxy "
              "and PostgreSQL compete for the same CPUs, so a proxy's CPU is taken away from the "
              "server and client. The ratios are what this box shows, not what a dedicated proxy "
              "host would show.\n")
    md.append("## Setup\n")
    md.append("\n".join(f"- {s}" for s in meta["setup"]) + "\n")
    md.append("## Results\n")
    md.extend(tbl)
    md.append("")
    md.extend(cpu)
    md.append("\n## Memory\n")
    md.extend(mem)
    md.append("")
    md.append("## Sanity checks (rows visible through each target)\n")
    md.extend(f"- {c}" for c in checks)
    md.append("")
    md.append("## Failures\n")
    md.extend(failures or ["None: every run completed with 0 failed transactions."])
    md.append("")
    md.append("## Exact commands\n")
    md.append("```")
    for r in recs:
        if r["kind"] == "pgbench" and r.get("round", 1) == 1:
            md.append(f"[{r['target']} / {r['workload']}] {r['command']}")
    md.append("```")
    md.append("\nRaw pgbench output: `pgbench.log` and `results.jsonl` in the run directory "
              f"(`{meta['run_dir']}`, removed at the end unless BENCH_KEEP=1); proxy logs likewise.")
    with open(a.out, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {a.out}")

    if a.docs:
        summary = []
        summary.append(f"Latest run: {meta['date']}, {meta['cpu_model']}, nproc = {meta['nproc']} "
                       f"(client, proxy and server share these cores). Full report: "
                       f"[`{os.path.relpath(a.out, os.path.dirname(os.path.abspath(a.docs)))}`]"
                       f"({os.path.relpath(a.out, os.path.dirname(os.path.abspath(a.docs)))}).\n")
        summary.append(f"Command: `{meta['command']}` — {meta['params']}\n")
        summary.extend(tbl)
        summary.append("")
        summary.extend(cpu)
        summary.append("")
        summary.extend(mem)
        summary.append("")
        if failures:
            summary.append("Failures in this run:\n")
            summary.extend(failures)
            summary.append("")
        text = open(a.docs).read() if os.path.exists(a.docs) else ""
        start, end = "<!-- BENCH-SUMMARY:START -->", "<!-- BENCH-SUMMARY:END -->"
        block = start + "\n" + "\n".join(summary) + "\n" + end
        if start in text and end in text:
            text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
        with open(a.docs, "w") as f:
            f.write(text)
        print(f"updated {a.docs}")


# --------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="sub", required=True)
    s = sub.add_parser("freeports")
    s.add_argument("n", type=int)
    s = sub.add_parser("pgbench")
    s.add_argument("--out", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--workload", required=True)
    s.add_argument("--round", type=int, default=1)
    s.add_argument("--pid", action="append", help="proxy pid to measure")
    s.add_argument("--env", action="append", help="NAME=VALUE for pgbench")
    s.add_argument("--show", help="command as shown in the report (secrets elided)")
    s.add_argument("--timeout", type=float, default=120)
    s.add_argument("argv", nargs=argparse.REMAINDER)
    s = sub.add_parser("idle")
    s.add_argument("--out", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--pid", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--user", required=True)
    s.add_argument("--db", required=True)
    s.add_argument("--password", required=True)
    s.add_argument("-n", type=int, default=200)
    s.add_argument("--hold", type=float, default=2.0)
    s.add_argument("--timeout", type=float, default=15.0)
    s = sub.add_parser("report")
    s.add_argument("--dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--docs")
    a = p.parse_args()
    if a.sub == "freeports":
        print(" ".join(map(str, free_ports(a.n))))
    elif a.sub == "pgbench":
        a.cmd = a.argv[1:] if a.argv and a.argv[0] == "--" else a.argv
        cmd_pgbench(a)
    elif a.sub == "idle":
        cmd_idle(a)
    elif a.sub == "report":
        cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
