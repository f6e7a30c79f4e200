#!/usr/bin/env python3
# usage: PGPASSWORD=<token or password> stray_cancel.py PORT   (lib/devenv.py prints both)
# Client A sends a CancelRequest for itself and disconnects right away; client B then gets
# the same pooled backend and runs a short query. Directly, B can never be cancelled (A's
# backend is gone). Counts how often B's query is cancelled.
import os, socket, struct, sys, time, threading
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "pgproto"))
import replay
host, port, user, db = "127.0.0.1", int(sys.argv[1]), "suite", os.environ.get("PGDATABASE", "suite_dev")
pw = os.environ["PGPASSWORD"]

def connect():
    c = replay.Conn(host, port)
    keys = []
    replay.startup(c, user, db, pw, lambda l: keys.append(l) if l.startswith("<= BackendKeyData") else None)
    pid, key = [int(x.split("=")[1]) for x in keys[0][len("<= BackendKeyData("):-1].split(", ")]
    return c, pid, key

def cancel(pid, key):
    s = socket.create_connection((host, port))
    s.sendall(struct.pack("!IIii", 16, 80877102, pid, key))
    s.recv(1)
    s.close()

hits = 0
N = int(sys.argv[2]) if len(sys.argv) > 2 else 50
for i in range(N):
    a, apid, akey = connect()
    a.send(replay.msg(b"Q", b"SELECT 1\0"))
    while a.read_msg()[0] != b"Z":
        pass
    cancel(apid, akey)            # A cancels itself while idle: a no-op directly
    a.send(replay.msg(b"X", b"")); a.sock.close()
    b, bpid, bkey = connect()
    b.send(replay.msg(b"Q", b"SELECT pg_sleep(0.2)\0"))
    while True:
        k, body = b.read_msg()
        if k == b"E":
            hits += 1
            print(f"iteration {i}: A pid {apid}, B pid {bpid}:", replay.describe(k, body))
        if k == b"Z":
            break
    b.send(replay.msg(b"X", b"")); b.sock.close()
print(f"B cancelled {hits}/{N} times")
