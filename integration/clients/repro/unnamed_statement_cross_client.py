#!/usr/bin/env python3
# usage: PGPASSWORD=<token or password> unnamed_statement_cross_client.py PORT   (lib/devenv.py prints both)
# Transaction mode: the unnamed prepared statement does not follow its client across a Sync.
# A: Parse(unnamed, "SELECT 'statement of A'...") + Sync ; B: Parse(unnamed, "SELECT 'statement of B'...") + Sync ;
# A: Bind(unnamed, 1 param) + Execute + Sync.  Directly A always runs its own statement.
import os, sys, struct
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "pgproto"))
import replay
port, db = int(sys.argv[1]), os.environ.get("PGDATABASE", "suite_dev")
pw = os.environ["PGPASSWORD"]
def conn():
    c = replay.Conn("127.0.0.1", port); replay.startup(c, "suite", db, pw, lambda l: None); return c
def send_and_read(c, script_lines, who):
    for label, data in replay.parse_script("\n".join(script_lines) + "\n"):
        if data is not None:
            c.send(data)
    while True:
        k, b = c.read_msg(); print(who, replay.describe(k, b))
        if k == b"Z": return
T = "\t"
a, b = conn(), conn()
send_and_read(a, ["'P'\t\"\"\t\"SELECT 'statement of A' AS who, $1::text AS arg\"\t0", "'S'"], "A")
send_and_read(b, ["'P'\t\"\"\t\"SELECT 'statement of B' AS who, $1::text AS arg\"\t0", "'S'"], "B")
send_and_read(a, ["'B'\t\"\"\t\"\"\t0\t1\t5\t\"A-arg\"\t0", "'E'\t\"\"\t0", "'S'"], "A")
