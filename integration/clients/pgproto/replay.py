#!/usr/bin/env python3
"""Replays a pgproto script over a raw socket and prints every backend message in full.

pgproto (from pgpool2) prints only a summary of each backend message (a DataRow is just
"DataRow"), and its Bind encoding of parameters is broken, so the golden diff also runs
every script through this replayer, which:
  * reads the same file format as pgproto (same quoting, tabs and line continuations),
  * sends byte-identical messages for everything pgproto encodes correctly, and encodes
    Bind parameters and result format codes correctly (scripts marked `# replay-only`
    use them; pgproto skips those),
  * prints each backend message losslessly (every field, every byte of DataRow values,
    every ErrorResponse field, the startup ParameterStatus sequence), so two outputs
    compare byte for byte.

The authentication exchange itself is not printed (SCRAM directly, a JWT in a cleartext
password message through rlsgate): output starts at AuthenticationOk.

usage: replay.py --host H --port P --user U --database D SCRIPT
       (password from PGPASSWORD)
"""

import argparse
import base64
import hashlib
import hmac
import os
import select
import socket
import struct
import sys


# ----------------------------------------------------------------------------- script


class ScriptError(Exception):
    pass


class Cursor:
    """Mirrors pgproto's buffer_read_* functions on one logical line."""

    def __init__(self, text: str):
        self.t = text
        self.i = 0

    def peek(self) -> str:
        return self.t[self.i] if self.i < len(self.t) else "\0"

    def skip_tabs(self):
        while self.peek() == "\t":
            self.i += 1

    def read_int(self) -> int:
        start = self.i
        while self.i < len(self.t) and self.t[self.i] != "\t" and self.i - start < 127:
            self.i += 1
        raw = self.t[start:self.i].strip()
        num = ""
        for ch in raw:
            if ch.isdigit() or (ch == "-" and not num):
                num += ch
            else:
                break
        return int(num) if num not in ("", "-") else 0

    def read_string(self) -> bytes:
        if self.peek() != '"':
            raise ScriptError(f"string does not start with \": {self.t[self.i:self.i + 40]!r}")
        self.i += 1
        out = []
        # do { if (*buf == '\\') buf++; *p++ = *buf++; } while (*buf && *buf != '\n' && *buf != '\t');
        while True:
            if self.peek() == "\\":
                self.i += 1
            if self.i < len(self.t):
                out.append(self.t[self.i])
            self.i += 1
            if self.i >= len(self.t) or self.t[self.i] in "\n\t":
                break
        s = "".join(out)
        if not s.endswith('"'):
            raise ScriptError(f"string does not end with \": {s[-40:]!r}")
        return s[:-1].encode()

    def read_char(self) -> bytes:
        if self.peek() != "'":
            raise ScriptError("char does not start with '")
        c = self.t[self.i + 1]
        if self.t[self.i + 2] != "'":
            raise ScriptError("char does not end with '")
        self.i += 3
        return c.encode()


def logical_lines(text: str):
    """Lines joined on backslash-newline (the newline stays in the text, as in pgproto)."""
    buf = ""
    for line in text.splitlines(keepends=True):
        buf += line
        if line.endswith("\\\n"):
            continue
        yield buf
        buf = ""
    if buf:
        yield buf


def parse_script(text: str):
    msgs = []
    for line in logical_lines(text):
        if not line.strip() or line.startswith("#") or line == "\n":
            continue
        if not line.startswith("'") or len(line) < 3 or line[2] != "'":
            raise ScriptError(f"bad line: {line[:60]!r}")
        kind = line[1]
        c = Cursor(line[3:])
        msgs.append(build(kind, c))
    return msgs


def cstr(b: bytes) -> bytes:
    return b + b"\0"


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def build(kind: str, c: Cursor):
    """Returns (label, bytes to send) or (directive, None)."""
    if kind in "Yy":
        return (kind, None)
    if kind in "XSHc":
        name = {"X": "Terminate", "S": "Sync", "H": "Flush", "c": "CopyDone"}[kind]
        return (f"FE=> {name}", msg(kind.encode(), b""))
    if kind == "Q":
        c.skip_tabs()
        q = c.read_string()
        return (f"FE=> Query({len(q)} bytes: {short(q)})", msg(b"Q", cstr(q)))
    if kind == "d":
        c.skip_tabs()
        d = c.read_string()
        return (f"FE=> CopyData({len(d)} bytes: {short(d)})", msg(b"d", d))
    if kind == "f":
        c.skip_tabs()
        e = c.read_string()
        return (f"FE=> CopyFail({short(e)})", msg(b"f", cstr(e)))
    if kind == "P":
        c.skip_tabs()
        stmt = c.read_string()
        c.skip_tabs()
        q = c.read_string()
        c.skip_tabs()
        n = c.read_int()
        oids = []
        for _ in range(n):
            c.skip_tabs()
            oids.append(c.read_int())
        body = cstr(stmt) + cstr(q) + struct.pack("!h", n) + b"".join(struct.pack("!I", o) for o in oids)
        return (f"FE=> Parse(stmt={stmt.decode()!r}, {len(q)} bytes: {short(q)}, oids={oids})", msg(b"P", body))
    if kind == "B":
        c.skip_tabs()
        portal = c.read_string()
        c.skip_tabs()
        stmt = c.read_string()
        c.skip_tabs()
        ncodes = c.read_int()
        c.skip_tabs()
        codes = []
        for _ in range(ncodes):
            codes.append(c.read_int())
            c.skip_tabs()
        nparams = c.read_int()
        c.skip_tabs()
        params = []
        for i in range(nparams):
            ln = c.read_int()
            c.skip_tabs()
            if ln == -1:
                params.append(None)
                continue
            v = c.read_string()
            c.skip_tabs()
            code = codes[i] if len(codes) > 1 else (codes[0] if codes else 0)
            params.append(struct.pack("!i", int(v)) if code == 1 else v)
        nres = c.read_int()
        c.skip_tabs()
        rcodes = []
        for _ in range(nres):
            rcodes.append(c.read_int())
            c.skip_tabs()
        body = cstr(portal) + cstr(stmt) + struct.pack("!h", ncodes) + b"".join(struct.pack("!h", x) for x in codes)
        body += struct.pack("!h", nparams)
        for p in params:
            body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
        body += struct.pack("!h", nres) + b"".join(struct.pack("!h", x) for x in rcodes)
        return (f"FE=> Bind(portal={portal.decode()!r}, stmt={stmt.decode()!r}, params={[short(p) if p is not None else None for p in params]}, "
                f"formats={codes}, result formats={rcodes})", msg(b"B", body))
    if kind == "E":
        c.skip_tabs()
        portal = c.read_string()
        c.skip_tabs()
        maxrows = c.read_int()
        return (f"FE=> Execute(portal={portal.decode()!r}, max rows={maxrows})", msg(b"E", cstr(portal) + struct.pack("!i", maxrows)))
    if kind in "DC":
        c.skip_tabs()
        k = c.read_char()
        c.skip_tabs()
        name = c.read_string()
        label = "Describe" if kind == "D" else "Close"
        what = "stmt" if k == b"S" else "portal"
        return (f"FE=> {label}({what}={name.decode()!r})", msg(kind.encode(), k + cstr(name)))
    if kind == "F":
        c.skip_tabs()
        foid = c.read_int()
        c.skip_tabs()
        ncodes = c.read_int()
        c.skip_tabs()
        codes = []
        for _ in range(ncodes):
            codes.append(c.read_int())
            c.skip_tabs()
        nparams = c.read_int()
        c.skip_tabs()
        args = []
        for _ in range(nparams):
            ln = c.read_int()
            c.skip_tabs()
            if ln > 0:
                v = c.read_string()
                c.skip_tabs()
                args.append(v[:ln])
            else:
                args.append(None if ln == -1 else b"")
        c.skip_tabs()
        rfmt = c.read_int()
        body = struct.pack("!I", foid) + struct.pack("!h", ncodes) + b"".join(struct.pack("!h", x) for x in codes)
        body += struct.pack("!h", nparams)
        for a in args:
            body += struct.pack("!i", -1) if a is None else struct.pack("!i", len(a)) + a
        body += struct.pack("!h", rfmt)
        return (f"FE=> FunctionCall(oid={foid}, args={[short(a) if a is not None else None for a in args]}, result format={rfmt})", msg(b"F", body))
    raise ScriptError(f"unknown message kind {kind!r}")


def short(b: bytes, n: int = 60) -> str:
    s = b.decode(errors="replace")
    return repr(s) if len(s) <= n else repr(s[:n]) + f"...(+{len(s) - n})"


# ----------------------------------------------------------------------------- wire


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, n: int):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def read_msg(self):
        self._fill(5)
        kind = self.buf[:1]
        (ln,) = struct.unpack("!I", self.buf[1:5])
        self._fill(1 + ln)
        body = self.buf[5:1 + ln]
        self.buf = self.buf[1 + ln:]
        return kind, body

    def readable(self, timeout: float) -> bool:
        if self.buf:
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)


def startup(conn: Conn, user: str, database: str, password: str, out):
    params = {"user": user, "database": database, "application_name": "pgproto"}
    body = struct.pack("!I", 196608) + b"".join(cstr(k.encode()) + cstr(v.encode()) for k, v in params.items()) + b"\0"
    conn.send(struct.pack("!I", len(body) + 4) + body)
    scram = None
    while True:
        kind, body = conn.read_msg()
        if kind == b"R":
            (code,) = struct.unpack("!I", body[:4])
            if code == 0:
                out("<= AuthenticationOk")
                break
            if code == 3:
                conn.send(msg(b"p", cstr(password.encode())))
            elif code == 5:
                salt = body[4:8]
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
                conn.send(msg(b"p", cstr(b"md5" + hashlib.md5(inner + salt).hexdigest().encode())))
            elif code == 10:
                scram = Scram(password)
                conn.send(msg(b"p", cstr(b"SCRAM-SHA-256") + struct.pack("!i", len(scram.first)) + scram.first))
            elif code == 11:
                conn.send(msg(b"p", scram.final(body[4:])))
            elif code == 12:
                pass
            else:
                raise SystemExit(f"unsupported authentication request {code}")
        elif kind == b"E":
            out(describe(kind, body))
            raise SystemExit(1)
        else:
            out(describe(kind, body))
    # ParameterStatus, BackendKeyData, ReadyForQuery
    while True:
        kind, body = conn.read_msg()
        out(describe(kind, body))
        if kind == b"Z":
            return


class Scram:
    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.bare = f"n=,r={self.nonce}".encode()
        self.first = b"n,," + self.bare

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}".encode()
        auth_message = self.bare + b"," + server_first + b"," + without_proof
        sig = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        return without_proof + b",p=" + base64.b64encode(proof)


NAMES = {
    b"1": "ParseComplete", b"2": "BindComplete", b"3": "CloseComplete", b"A": "NotificationResponse",
    b"C": "CommandComplete", b"D": "DataRow", b"E": "ErrorResponse", b"G": "CopyInResponse",
    b"H": "CopyOutResponse", b"I": "EmptyQueryResponse", b"K": "BackendKeyData", b"N": "NoticeResponse",
    b"R": "Authentication", b"S": "ParameterStatus", b"T": "RowDescription", b"V": "FunctionCallResponse",
    b"W": "CopyBothResponse", b"Z": "ReadyForQuery", b"c": "CopyDone", b"d": "CopyData", b"n": "NoData",
    b"s": "PortalSuspended", b"t": "ParameterDescription", b"v": "NegotiateProtocolVersion",
}


def val(b):
    return "NULL" if b is None else repr(b)[1:]


def describe(kind: bytes, body: bytes) -> str:
    name = NAMES.get(kind, f"Unknown({kind!r})")
    try:
        return f"<= {name}{decode(kind, body)}"
    except Exception as e:  # noqa: BLE001 - print raw, the diff will show it
        return f"<= {name} undecodable ({e}): {body!r}"


def decode(kind: bytes, body: bytes) -> str:
    p = 0

    def i32():
        nonlocal p
        (v,) = struct.unpack("!i", body[p:p + 4])
        p += 4
        return v

    def i16():
        nonlocal p
        (v,) = struct.unpack("!h", body[p:p + 2])
        p += 2
        return v

    def s():
        nonlocal p
        e = body.index(b"\0", p)
        v = body[p:e]
        p = e + 1
        return v

    if kind in (b"1", b"2", b"3", b"I", b"n", b"s", b"c"):
        out = ""
    elif kind == b"Z":
        out = f" {body.decode()}"
        p = len(body)
    elif kind == b"C":
        out = f" {s().decode()!r}"
    elif kind == b"S":
        k = s().decode()
        out = f" {k}={s().decode()!r}"
    elif kind == b"K":
        out = f"(pid={i32()}, key={i32()})"
    elif kind in (b"E", b"N"):
        fields = []
        while body[p:p + 1] != b"\0":
            code = body[p:p + 1].decode()
            p += 1
            fields.append(f"{code}={s().decode()!r}")
        p += 1
        out = " " + " ".join(fields)
    elif kind == b"T":
        n = i16()
        cols = []
        for _ in range(n):
            cname = s().decode()
            table, attnum, typ, typlen, typmod, fmt = i32(), i16(), i32(), i16(), i32(), i16()
            cols.append(f"{{{cname!r} table={table} attnum={attnum} type={typ} len={typlen} typmod={typmod} format={fmt}}}")
        out = f" [{', '.join(cols)}]"
    elif kind == b"D":
        n = i16()
        vals = []
        for _ in range(n):
            ln = i32()
            if ln == -1:
                vals.append("NULL")
            else:
                v = body[p:p + ln]
                p += ln
                vals.append(f"'{val(v)[1:-1]}'" if len(v) <= 200 else f"<{len(v)} bytes sha256={hashlib.sha256(v).hexdigest()[:16]}>")
        out = f" [{', '.join(vals)}]"
    elif kind == b"t":
        n = i16()
        out = f" {[i32() for _ in range(n)]}"
    elif kind in (b"G", b"H", b"W"):
        fmt = body[0]
        p = 1
        n = i16()
        out = f" format={fmt} columns={[i16() for _ in range(n)]}"
    elif kind == b"d":
        out = f" {len(body)} bytes: {val(body) if len(body) <= 200 else 'sha256=' + hashlib.sha256(body).hexdigest()[:16]}"
        p = len(body)
    elif kind == b"A":
        pid = i32()
        ch = s().decode()
        payload = s().decode()
        out = f"(pid={pid}, channel={ch!r}, payload={payload!r})"
    elif kind == b"V":
        ln = i32()
        if ln == -1:
            out = " NULL"
        else:
            out = f" {val(body[p:p + ln])}"
            p += ln
    elif kind == b"v":
        minor = i32()
        n = i32()
        out = f" minor={minor} unsupported={[s().decode() for _ in range(n)]}"
    else:
        out = f" {body!r}"
        p = len(body)
    if p != len(body):
        out += f" TRAILING {body[p:]!r}"
    return out


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5432)
    ap.add_argument("--user", required=True)
    ap.add_argument("--database", required=True)
    ap.add_argument("script")
    a = ap.parse_args()
    lines = []

    def out(s):
        lines.append(s)
        print(s, flush=True)

    msgs = parse_script(open(a.script, encoding="utf-8").read())
    conn = Conn(a.host, a.port)
    try:
        startup(conn, a.user, a.database, os.environ.get("PGPASSWORD", ""), out)
        for label, data in msgs:
            if data is not None:
                out(label)
                conn.send(data)
                continue
            # 'Y': until ReadyForQuery. 'y': same, but stop after 1 s without data.
            while True:
                if label == "y" and not conn.readable(1.0):
                    break
                kind, body = conn.read_msg()
                out(describe(kind, body))
                if kind == b"Z":
                    break
    except EOFError:
        out("<= EOF (server closed the connection)")
        sys.exit(1)
    except (ConnectionResetError, BrokenPipeError) as e:
        out(f"<= connection error {type(e).__name__}")
        sys.exit(1)


if __name__ == "__main__":
    main()
