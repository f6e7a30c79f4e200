#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ (small, real messages). Run from anywhere:
   python3 fuzz/make_corpus.py
The messages are laid out exactly as src/wire/protocol.rs's put_* helpers write them;
the tokens are signed with the fuzz targets' test secret (fuzz_targets/jwt.rs) and the
EC fixture key is not needed (mode 3 of the jwt target signs itself)."""
import base64, hashlib, hmac, json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "corpus")
SECRET = b"fuzz-secret-fuzz-secret-fuzz-secret-0123"
EXP = 4102444800  # 2100-01-01

def msg(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body

def cstr(s):
    return (s if isinstance(s, bytes) else s.encode()) + b"\0"

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def token(claims, header=None):
    header = header or {"alg": "HS256", "typ": "JWT"}
    h = json.dumps(header, separators=(",", ":")).encode()
    c = json.dumps(claims, separators=(",", ":")).encode() if not isinstance(claims, bytes) else claims
    signing = (b64(h) + "." + b64(c)).encode()
    return signing.decode() + "." + b64(hmac.new(SECRET, signing, hashlib.sha256).digest())

def startup(params, minor=0):
    body = struct.pack(">HH", 3, minor) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack(">I", len(body) + 4) + body

def password(pw):
    return msg(b"p", cstr(pw))

def parse(name, sql, types=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack(">H", len(types)) + b"".join(struct.pack(">I", t) for t in types))

def bind(portal, stmt, params=(), formats=(), results=()):
    body = cstr(portal) + cstr(stmt) + struct.pack(">H", len(formats)) + b"".join(struct.pack(">H", f) for f in formats)
    body += struct.pack(">H", len(params))
    for p in params:
        body += struct.pack(">i", -1) if p is None else struct.pack(">i", len(p)) + p
    body += struct.pack(">H", len(results)) + b"".join(struct.pack(">H", f) for f in results)
    return msg(b"B", body)

def describe(kind, name): return msg(b"D", kind + cstr(name))
def close(kind, name): return msg(b"C", kind + cstr(name))
def execute(portal, n=0): return msg(b"E", cstr(portal) + struct.pack(">i", n))
def query(sql): return msg(b"Q", cstr(sql))
SYNC = msg(b"S", b"")
FLUSH = msg(b"H", b"")
TERMINATE = msg(b"X", b"")

def error(fields):
    return msg(b"E", b"".join(f + cstr(v) for f, v in fields) + b"\0")

def notice(fields):
    return msg(b"N", b"".join(f + cstr(v) for f, v in fields) + b"\0")

def pstatus(n, v): return msg(b"S", cstr(n) + cstr(v))
def rfq(s): return msg(b"Z", s)
def auth(code, rest=b""): return msg(b"R", struct.pack(">i", code) + rest)
def keydata(pid, secret): return msg(b"K", struct.pack(">ii", pid, secret))
def command_complete(tag): return msg(b"C", cstr(tag))

def row_description(cols):
    body = struct.pack(">H", len(cols))
    for name in cols:
        body += cstr(name) + struct.pack(">IhIhih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", body)

def data_row(vals):
    body = struct.pack(">H", len(vals))
    for v in vals:
        body += struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v
    return msg(b"D", body)

def notification(pid, channel, payload):
    return msg(b"A", struct.pack(">i", pid) + cstr(channel) + cstr(payload))

def write(target, files):
    # Inputs that once crashed a target (`crash-*`) are kept: they are regression seeds.
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if not old.startswith("crash-"):
            os.remove(os.path.join(d, old))
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

# ---------------------------------------------------------------- frontend
SUFFIX = "rlsgate_acme"  # illustrative only; the real suffix is computed
frontend_streams = {
    "simple_query": query("SELECT * FROM customers"),
    "multi_query": query("BEGIN; SELECT 1; COMMIT"),
    "extended_unnamed": parse("", "SELECT $1::int", [23]) + bind("", "", [b"42"]) + describe(b"P", "") + execute("") + SYNC,
    "extended_named": parse("s1", "SELECT * FROM t WHERE id = $1", [0]) + bind("p1", "s1", [b"7"], [0], [1]) + execute("p1", 10) + close(b"P", "p1") + close(b"S", "s1") + SYNC,
    "describe_statement": parse("s2", "SELECT 1") + describe(b"S", "s2") + FLUSH,
    "bind_null_binary": bind("", "s1", [None, b"\x00\x00\x00\x01"], [1, 1], [1]),
    "pipeline": b"".join(parse("q%d" % i, "SELECT %d" % i) + bind("", "q%d" % i) + execute("") for i in range(3)) + SYNC,
    "copy_in": query("COPY t FROM STDIN") + msg(b"d", b"1\tacme\n") + msg(b"c", b""),
    "copy_fail": msg(b"d", b"x") + msg(b"f", cstr("client gave up")),
    "function_call": msg(b"F", struct.pack(">IH", 1598, 0) + struct.pack(">H", 0) + struct.pack(">H", 0)),
    "terminate": query("SELECT 1") + TERMINATE,
    "sjis_text": query(b"SELECT '\x95\x5c'"),
    "bad_length": b"Q\x00\x00\x00\x02",
    "partial": parse("s1", "SELECT 1")[:7],
}
write("frontend", {n: bytes([sel, chunk]) + s for n, s in frontend_streams.items() for sel, chunk in [(0, 255)]}
      | {n + "_chunked": bytes([1, 3]) + s for n, s in list(frontend_streams.items())[:6]})

# ---------------------------------------------------------------- backend
PLACEHOLDER = "rlsgate_################"
backend_streams = {
    "startup_ok": auth(0) + pstatus("server_version", "15.18") + pstatus("client_encoding", "UTF8") + pstatus("DateStyle", "ISO, MDY") + keydata(1234, 5678) + rfq(b"I"),
    "sasl": auth(10, cstr("SCRAM-SHA-256") + b"\0"),
    "sasl_continue": auth(11, b"r=abcdefghijklmnopqrstuvwxyzABCDEF,s=QSXCR+Q6sek8bf92,i=4096"),
    "md5": auth(5, b"\x01\x02\x03\x04"),
    "query_rows": row_description(["a", "b"]) + data_row([b"true", None]) + command_complete("SELECT 1") + rfq(b"T"),
    "error": error([(b"S", "ERROR"), (b"V", "ERROR"), (b"C", "42501"), (b"M", "permission denied for table t")]) + rfq(b"E"),
    "fatal": error([(b"S", "FATAL"), (b"V", "FATAL"), (b"C", "57P01"), (b"M", "terminating connection due to administrator command")]),
    "error_statement": error([(b"S", "ERROR"), (b"C", "08P01"), (b"M", 'bind message supplies 1 parameters, but prepared statement "%s" requires 2' % PLACEHOLDER)]),
    "error_rename": error([(b"S", "ERROR"), (b"C", "26000"), (b"M", 'prepared statement "rlsgate_0123456789abcdef" does not exist')]),
    "notice": notice([(b"S", "WARNING"), (b"C", "01000"), (b"M", "there is no transaction in progress")]),
    "notify": notification(4321, "jobs_" + "x" * 16, "payload"),
    "copy_out": msg(b"H", b"\x00\x00\x01\x00\x00") + msg(b"d", b"1\n") + msg(b"c", b"") + command_complete("COPY 1") + rfq(b"I"),
    "parameter_status_tx": pstatus("TimeZone", "UTC") + rfq(b"I"),
}
write("backend", {n: b"\xff" + s for n, s in backend_streams.items()} | {"startup_ok_chunked": b"\x02" + backend_streams["startup_ok"]})

# ---------------------------------------------------------------- upstream (fake server)
upstream = {
    "trust_then_rows": auth(0) + pstatus("is_superuser", "off") + keydata(99, 12345) + rfq(b"I")
        + row_description(["rolsuper", "rolbypassrls"]) + data_row([b"false", b"false"]) + command_complete("SELECT 1") + rfq(b"I")
        + data_row([b"1"]) + command_complete("SELECT 1") + rfq(b"I")
        + data_row([b"1"]) + rfq(b"I") + data_row([b"2"]) + rfq(b"I") + command_complete("SELECT 1") + rfq(b"I"),
    "cleartext": auth(3) + auth(0) + keydata(1, 2) + rfq(b"I"),
    "md5": auth(5, b"\xaa\xbb\xcc\xdd") + auth(0) + rfq(b"I"),
    "sasl": auth(10, cstr("SCRAM-SHA-256") + b"\0") + auth(11, b"r=abc,s=QSXCR+Q6sek8bf92,i=4096"),
    "startup_error": error([(b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28P01"), (b"M", "password authentication failed")]),
    "superuser": auth(0) + pstatus("is_superuser", "on") + rfq(b"I"),
    "copy_in_proxy_query": auth(0) + rfq(b"I") + row_description(["a", "b"]) + data_row([b"f", b"f"]) + rfq(b"I") + msg(b"G", b"\x00\x00\x00"),
    "query_fatal": auth(0) + rfq(b"I") + data_row([b"false", b"true"]) + rfq(b"I") + error([(b"S", "FATAL"), (b"C", "57P01"), (b"M", "bye")]),
}
write("upstream", upstream)

# ---------------------------------------------------------------- startup (client bytes)
valid = token({"tenant_id": "acme", "sub": "alice", "exp": EXP})
base = [("user", "alice"), ("database", "app")]
SSL = struct.pack(">II", 8, 80877103)
startups = {
    "login": startup(base) + password(valid),
    "login_pipelined": startup(base) + password(valid) + query("SELECT 1"),
    "login_options": startup(base + [("options", "-c search_path=a,b --statement-timeout=5s"), ("application_name", "psql")]) + password(valid),
    "login_owned_option": startup(base + [("options", "-c app.current_tenant=globex")]) + password(valid),
    "login_owned_param": startup(base + [("app.user_id", "mallory"), ("client_encoding", "SJIS")]) + password(valid),
    "login_role": startup(base + [("role", "postgres")]) + password(valid),
    "protocol_3_2": startup(base + [("_pq_.test", "1")], minor=2) + password(valid),
    "wrong_database": startup([("user", "alice"), ("database", "other")]) + password(valid),
    "expired": startup(base) + password(token({"tenant_id": "acme", "exp": 1000})),
    "alg_none": startup(base) + password(b64(b'{"alg":"none"}') + "." + b64(b'{"tenant_id":"a","exp":%d}' % EXP) + "."),
    "no_user": startup([("database", "app")]),
    "cancel": struct.pack(">IIii", 16, 80877102, 1234, 5678),
    "ssl_then_login": SSL + startup(base) + password(valid),
    "empty_password": startup(base) + password(""),
}
files = {}
for n, s in startups.items():
    mode = 3 if n.startswith("ssl") else 0
    files[n] = bytes([mode]) + s
files["login_tcp_prefer"] = bytes([3]) + startups["login"]
files["login_tcp_require"] = bytes([4]) + startups["login"]
files["ssl_tcp_require"] = bytes([4]) + startups["ssl_then_login"]
write("startup", files)

# ---------------------------------------------------------------- jwt
jwt = {
    "raw_valid": b"\x00" + valid.encode(),
    "raw_alg_none": b"\x00" + (b64(b'{"alg":"none"}') + "." + b64(b"{}") + ".").encode(),
    "raw_two_parts": b"\x00" + b"abc.def",
    "header_claims": b"\x01" + b'{"alg":"HS256","kid":"k1"}\0{"tenant_id":"acme","sub":"alice","exp":%d,"role":"reader"}' % EXP,
    "header_es_confusion": b"\x01" + b'{"alg":"ES256"}\0{"tenant_id":"acme","exp":%d}' % EXP,
    "header_crit": b"\x01" + b'{"alg":"HS256","crit":["x"]}\0{"tenant_id":"acme","exp":%d}' % EXP,
    "claims_plain": b"\x02" + b'{"tenant_id":"acme","sub":"alice","exp":%d,"jti":"j1"}' % EXP,
    "claims_int_tenant": b"\x02" + b'{"tenant_id":42,"exp":%d}' % EXP,
    "claims_strict": b"\x02" + json.dumps({"app": {"tenant": "acme"}, "sub": "alice", "iss": "https://issuer.example", "aud": "rlsgate", "exp": EXP}).encode(),
    "claims_float_exp": b"\x02" + b'{"tenant_id":"acme","exp":4102444800.7,"nbf":1.5}',
    "claims_aud_array": b"\x02" + b'{"tenant_id":"acme","exp":%d,"aud":["x","rlsgate"]}' % EXP,
    "claims_es": b"\x03" + b'{"tenant_id":"acme","sub":"bob","exp":%d}' % EXP,
    "claims_no_user": b"\x82" + b'{"app":{"tenant":"acme"},"sub":"alice","iss":"https://issuer.example","aud":"rlsgate","exp":%d}' % EXP,
    "header_only": b"\x04" + b'{"alg":"HS256","typ":"JWT","kid":"a"}',
}
write("jwt", jwt)

# ---------------------------------------------------------------- jwks
fixture = open(os.path.join(HERE, "..", "integration", "fixtures", "keys", "jwks.json"), "rb").read()
ec = {"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig", "alg": "ES256",
      "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
okp = {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
jwks = {
    "fixture_rsa": b"\x00" + fixture,
    "fixture_all": b"\x03" + fixture,
    "ec": b"\x01" + json.dumps({"keys": [ec]}).encode(),
    "ed": b"\x02" + json.dumps({"keys": [okp]}).encode(),
    "mixed": b"\x03" + json.dumps({"keys": [ec, okp, {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}).encode(),
    "dup_kid": b"\x01" + json.dumps({"keys": [ec, ec]}).encode(),
    "wrong_curve": b"\x04" + json.dumps({"keys": [dict(ec, alg="ES384")]}).encode(),
    "empty": b"\x00" + b'{"keys":[]}',
}
write("jwks", jwks)

# ---------------------------------------------------------------- sql
sqls = [
    "SELECT * FROM customers WHERE id = 1",
    "SET app.current_tenant = 'globex'",
    "SELECT set_config('app.current_tenant', 'globex', false)",
    "WITH x AS (SELECT set_config('app.current_tenant','b',true)) SELECT * FROM x",
    "RESET ALL",
    "DISCARD ALL",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "DO $$BEGIN PERFORM set_config('app.current_tenant','b',false); END$$",
    "DO $$BEGIN EXECUTE 'SET app.' || 'current_tenant = 1'; END$$",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SELECT set_config(''app.current_tenant'',''b'',false)'",
    "ALTER ROLE app SET app.current_tenant = 'b'",
    "SELECT query FROM pg_stat_activity",
    "SELECT * FROM pg_prepared_statements",
    "SELECT lo_get(1)",
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'GBK'",
    "LISTEN jobs; NOTIFY jobs, 'x'",
    "SELECT pg_cancel_backend(123)",
    "PREPARE p AS SELECT 1; EXECUTE p",
    "SELECT U&\"app.current\\005ftenant\" FROM t",
    "SET standard_conforming_strings = off",
    "SELECT pg_advisory_lock(1)",
    "CREATE TEMP TABLE t (a int)",
]
files = {"q%02d" % i: bytes([0x16, i & 1]) + s.encode() for i, s in enumerate(sqls)}  # 0x16: UTF8 index varies; any byte works
files["sjis_backslash"] = bytes([0x00, 0]) + b"SELECT '\x95\x5c' ; SET app.current_tenant = 'b' --'"
files["prefix_shape"] = bytes([0x10, 1]) + b"SELECT 1 FROM t WHERE a = 2\xffSELECT 3 FROM t WHERE a = 4"
files["unknown_encoding"] = bytes([0xff, 0]) + b"SELECT '\xe9'"
write("sql", files)

# ---------------------------------------------------------------- config
example = open(os.path.join(HERE, "..", "config", "rlsgate.example.toml"), "rb").read()
minimal = b'''[auth.jwt]
algorithms = ["HS256"]
secret_env = "RLSGATE_JWT_SECRET"

[upstream]
url = "postgres://rlsgate@localhost:5432/app"
'''
config = {
    "example": example,
    "minimal": minimal,
    "minimal_env": minimal + b"\n%%env\nRLSGATE_POOL__SIZE=3\nRLSGATE_AUTH__JWT__ALGORITHMS=[\"RS256\",\"ES256\"]\nRLSGATE_AUTH__JWT__ISSUER=1234\n",
    "unix_upstream": minimal.replace(b"postgres://rlsgate@localhost:5432/app", b"postgres://u@%2Ftmp/db?port=5433"),
    "transaction_mode": minimal + b'\n[pool]\nmode = "transaction"\nsize = 10\nacquire_timeout = "5s"\n\n[tenant]\nsetting = "app.current_tenant"\nclaims = { "app.user_id" = "sub" }\n',
    "unknown_key": minimal + b"\n[pool]\nbogus = 1\n",
}
write("config", config)
print("corpus written to", ROOT)
