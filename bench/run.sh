#!/usr/bin/env bash
# rlsgate benchmark: direct PostgreSQL vs PgBouncer vs rlsgate, in one run, on loopback.
#
#   bench/run.sh                       # full run (~10-12 min), writes bench/results/<date>.md
#                                      # and the summary in docs/benchmarks.md
#   BENCH_DURATION=3 bench/run.sh      # quick smoke run (does not touch docs/ unless
#                                      # BENCH_UPDATE_DOCS=1)
#
# Knobs (environment): BENCH_DURATION (s per run, default 10), BENCH_CHURN_DURATION (s per
# connection-churn run, default 5), BENCH_ROUNDS (default 2: every workload runs ROUNDS
# times through all targets, interleaved, and the report averages them), BENCH_CLIENTS (8), BENCH_THREADS (2), BENCH_SCALE (10),
# BENCH_POOL_SIZE (10), BENCH_IDLE_CLIENTS (200), BENCH_WORKLOADS (space separated subset of
# read-simple read-extended read-prepared tpcb-simple churn-simple, plus the diagnostic
# read-fixed: read-simple with a constant statement text), BENCH_PERF=1 (perf profile of
# rlsgate during its runs, written next to the report), BENCH_KEEP=1 (keep the
# temp dir with logs), BENCH_UPDATE_DOCS (1 = rewrite the docs summary; default 1 for a
# full-length run), PG_BIN_DIR (PostgreSQL server binaries, default /usr/lib/postgresql/15/bin).
#
# Everything listens on 127.0.0.1 only; no stdin is read; works with CI set or unset.
set -euo pipefail
exec </dev/null

START_TS=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY="python3 $HERE/bench.py"

DURATION=${BENCH_DURATION:-10}
CHURN_DURATION=${BENCH_CHURN_DURATION:-5}
ROUNDS=${BENCH_ROUNDS:-2}
CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}
SCALE=${BENCH_SCALE:-10}
POOL_SIZE=${BENCH_POOL_SIZE:-10}
IDLE_CLIENTS=${BENCH_IDLE_CLIENTS:-200}
WORKLOADS=${BENCH_WORKLOADS:-"read-simple read-extended read-prepared tpcb-simple churn-simple"}
PG_BIN=${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
MAX_SECONDS=${BENCH_MAX_SECONDS:-1800}
if [[ -z ${BENCH_UPDATE_DOCS:-} ]]; then
    if [[ $DURATION -ge 10 && $ROUNDS -ge 2 && -z ${BENCH_WORKLOADS:-} ]]; then BENCH_UPDATE_DOCS=1; else BENCH_UPDATE_DOCS=0; fi
fi
TENANT=t1
PG_PASSWORD="bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
JWT_SECRET="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"

log() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
die() { log "ERROR: $*"; exit 1; }

IS_ROOT=0; [[ $(id -u) -eq 0 ]] && IS_ROOT=1
# Run a command as the postgres OS user when we are root (initdb/postgres refuse root).
as_pg() { if [[ $IS_ROOT -eq 1 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Prefix that execs a command as postgres (no intermediate process, so $! is its pid).
AS_PG_EXEC=()
[[ $IS_ROOT -eq 1 ]] && AS_PG_EXEC=(setpriv --reuid=postgres --regid=postgres --init-groups --)
apt_install() {
    local sudo=""
    [[ $IS_ROOT -eq 1 ]] || sudo="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q "$@" >/dev/null 2>&1 || {
        $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}

# ------------------------------------------------------------------ prerequisites
log "checking prerequisites"
[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] ||
    die "PostgreSQL server binaries not found in $PG_BIN (apt-get install -y postgresql-15, or set PG_BIN_DIR)"
command -v pgbouncer >/dev/null || { log "installing pgbouncer"; apt_install pgbouncer; }
command -v pgbench >/dev/null || [[ -x $PG_BIN/pgbench ]] || { log "installing pgbench"; apt_install postgresql-contrib; }
command -v psql >/dev/null || apt_install postgresql-client
PGBENCH=$PG_BIN/pgbench; [[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench)
PSQL=$PG_BIN/psql; [[ -x $PSQL ]] || PSQL=$(command -v psql)
PGBOUNCER=$(command -v pgbouncer)
command -v python3 >/dev/null || die "python3 is required"

log "building rlsgate (cargo build --release)"
for attempt in 1 2 3 4 5; do
    if (cd "$ROOT" && cargo build --release --quiet 2>"$HERE/.build.err"); then rm -f "$HERE/.build.err"; break; fi
    tail -n 5 "$HERE/.build.err" >&2
    [[ $attempt -lt 5 ]] || die "cargo build --release failed 5 times"
    log "build failed (attempt $attempt); someone may be mid-edit, retrying in 60 s"
    sleep 60
done
RLSGATE=$ROOT/target/release/rlsgate
[[ -x $RLSGATE ]] || die "$RLSGATE missing after build"

# ------------------------------------------------------------------ temp dir, cleanup
RUN_DIR=$(mktemp -d /tmp/rlsgate-bench.XXXXXX)
chmod 755 "$RUN_DIR"
[[ $IS_ROOT -eq 1 ]] && chown postgres: "$RUN_DIR"
PIDS=()
PG_STARTED=0
WATCHDOG=""
WATCHDOG_SLEEP=""
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    [[ $PG_STARTED -eq 1 ]] && as_pg "$PG_BIN/pg_ctl" -D "$RUN_DIR/pgdata" -m fast -w stop >/dev/null 2>&1
    [[ -n $WATCHDOG ]] && kill "$WATCHDOG" 2>/dev/null
    [[ -n $WATCHDOG_SLEEP ]] && kill "$WATCHDOG_SLEEP" 2>/dev/null
    if [[ ${BENCH_KEEP:-0} == 1 || $rc -ne 0 ]]; then log "run directory kept: $RUN_DIR"
    else rm -rf "$RUN_DIR"; fi
    exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
# Watchdog: stops the whole run after BENCH_MAX_SECONDS (every pgbench also has its own timeout).
sleep "$MAX_SECONDS" >/dev/null 2>&1 </dev/null &
WATCHDOG_SLEEP=$!
( while kill -0 "$WATCHDOG_SLEEP" 2>/dev/null; do sleep 2; done; kill -TERM $$ ) >/dev/null 2>&1 &
WATCHDOG=$!

read -r PG_PORT PGB_S_PORT PGB_T_PORT RLS_S_PORT RLS_T_PORT <<<"$($PY freeports 5)"
RESULTS=$RUN_DIR/results.jsonl
: >"$RESULTS"
: >"$RUN_DIR/checks.txt"

# ------------------------------------------------------------------ PostgreSQL 15
log "starting PostgreSQL ($PG_BIN) on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$RUN_DIR/pgdata" -U postgres --auth=trust -E UTF8 --no-sync >"$RUN_DIR/initdb.log" 2>&1 ||
    { cat "$RUN_DIR/initdb.log"; die "initdb failed"; }
# Same settings as src/dev/pgtemp.rs (tuned for speed, no durability), loopback only.
cat >>"$RUN_DIR/pgdata/postgresql.conf" <<EOF
# --- rlsgate bench ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$RUN_DIR'
fsync = off
full_page_writes = off
synchronous_commit = off
max_connections = 200
shared_buffers = 128MB
logging_collector = off
password_encryption = 'scram-sha-256'
EOF
cat >"$RUN_DIR/pgdata/pg_hba.conf" <<EOF
local all postgres trust
host  all postgres 127.0.0.1/32 trust
host  all all      127.0.0.1/32 scram-sha-256
EOF
as_pg "$PG_BIN/pg_ctl" -D "$RUN_DIR/pgdata" -l "$RUN_DIR/postgres.log" -w -t 60 start >/dev/null ||
    { tail -20 "$RUN_DIR/postgres.log"; die "pg_ctl start failed"; }
PG_STARTED=1

su_psql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$RUN_DIR" -p "$PG_PORT" -U postgres "$@"; }
su_pgbench() { "$PGBENCH" -h "$RUN_DIR" -p "$PG_PORT" -U postgres "$@"; }

log "creating database app, role app_rls, pgbench tables (scale $SCALE) with tenant_id + RLS"
su_psql -d postgres -c "CREATE DATABASE app" \
    -c "CREATE ROLE app_rls LOGIN PASSWORD '$PG_PASSWORD' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
# Tables first, then the tenant column as a generated column so that pgbench's own
# server-side data generation fills it, then turn it into a plain column.
su_pgbench -i -q -I dt -s "$SCALE" app >"$RUN_DIR/init.log" 2>&1
su_psql -d app <<'EOF'
ALTER TABLE pgbench_accounts ADD COLUMN tenant_id text GENERATED ALWAYS AS ('t' || ((aid - 1) % 8 + 1)) STORED;
ALTER TABLE pgbench_branches ADD COLUMN tenant_id text GENERATED ALWAYS AS ('t' || ((bid - 1) % 8 + 1)) STORED;
ALTER TABLE pgbench_tellers  ADD COLUMN tenant_id text GENERATED ALWAYS AS ('t' || ((tid - 1) % 8 + 1)) STORED;
EOF
su_pgbench -i -q -I G -s "$SCALE" app >>"$RUN_DIR/init.log" 2>&1
su_psql -d app <<'EOF'
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers'] LOOP
    EXECUTE format('ALTER TABLE %I ALTER COLUMN tenant_id DROP EXPRESSION', t);
  END LOOP;
END $$;
ALTER TABLE pgbench_history ADD COLUMN tenant_id text;
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history'] LOOP
    EXECUTE format('ALTER TABLE %I ALTER COLUMN tenant_id SET NOT NULL', t);
    EXECUTE format($q$ALTER TABLE %I ALTER COLUMN tenant_id SET DEFAULT current_setting('app.current_tenant')$q$, t);
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format($q$CREATE POLICY tenant_isolation ON %I
                        USING (tenant_id = current_setting('app.current_tenant', true))
                        WITH CHECK (tenant_id = current_setting('app.current_tenant', true))$q$, t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO app_rls', t);
  END LOOP;
END $$;
EOF
su_pgbench -i -q -I vp -s "$SCALE" app >>"$RUN_DIR/init.log" 2>&1
su_psql -d app -c "ANALYZE"

# ------------------------------------------------------------------ secrets, proxies
umask 077
printf '%s\n' "$PG_PASSWORD" >"$RUN_DIR/pg_password"
printf '%s\n' "$JWT_SECRET" >"$RUN_DIR/jwt_secret"
printf '"app_rls" "%s"\n' "$PG_PASSWORD" >"$RUN_DIR/userlist.txt"
umask 022
[[ $IS_ROOT -eq 1 ]] && chown postgres: "$RUN_DIR/userlist.txt"

write_rlsgate_conf() { # mode port
    cat >"$RUN_DIR/rlsgate-$1.toml" <<EOF
# Benchmark config. TLS is disabled on purpose so that rlsgate, PgBouncer and direct
# PostgreSQL are all compared over plaintext loopback TCP.
[listen]
addr = "127.0.0.1:$2"
max_clients = 1000

[tls]
mode = "disable"

[auth.jwt]
algorithms = ["HS256"]
secret_file = "$RUN_DIR/jwt_secret"

[upstream]
url = "postgres://app_rls@127.0.0.1:$PG_PORT/app"
password_file = "$RUN_DIR/pg_password"

[pool]
mode = "$1"
size = $POOL_SIZE

[tenant]
setting = "app.current_tenant"
EOF
}
write_pgbouncer_conf() { # mode port
    cat >"$RUN_DIR/pgbouncer-$1.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app user=app_rls

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = plain
auth_file = $RUN_DIR/userlist.txt
pool_mode = $1
default_pool_size = $POOL_SIZE
max_client_conn = 1000
logfile = $RUN_DIR/pgbouncer-$1.log
pidfile = $RUN_DIR/pgbouncer-$1.pid
EOF
    [[ $IS_ROOT -eq 1 ]] && chown postgres: "$RUN_DIR/pgbouncer-$1.ini"
    return 0
}
wait_port() { # port pid name
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || { log "$3 exited at start"; return 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "$3 did not listen on $1"; return 1
}
declare -A PID_OF PORT_OF
rss_start() { # target
    sleep 1
    PID=${PID_OF[$1]}
    echo "$PID" >"$RUN_DIR/$1.pidnum"
    awk '/^VmRSS:/ {print $2}' "/proc/$PID/status" >"$RUN_DIR/$1.rss_start"
}

for mode in session transaction; do
    write_rlsgate_conf "$mode" "$([[ $mode == session ]] && echo "$RLS_S_PORT" || echo "$RLS_T_PORT")"
    if out=$("$RLSGATE" check-config --config "$RUN_DIR/rlsgate-$mode.toml" 2>&1); then
        echo "rlsgate check-config ($mode pooling): ok" >>"$RUN_DIR/checks.txt"
    else
        echo "rlsgate check-config ($mode pooling) REFUSED: $(echo "$out" | tr '\n' ' ')" >>"$RUN_DIR/checks.txt"
        log "rlsgate check-config refused $mode mode: $out"
    fi
done

log "starting proxies: PgBouncer session :$PGB_S_PORT / transaction :$PGB_T_PORT, rlsgate session :$RLS_S_PORT / transaction :$RLS_T_PORT"
for mode in session transaction; do
    port=$([[ $mode == session ]] && echo "$PGB_S_PORT" || echo "$PGB_T_PORT")
    write_pgbouncer_conf "$mode" "$port"
    "${AS_PG_EXEC[@]}" "$PGBOUNCER" "$RUN_DIR/pgbouncer-$mode.ini" >"$RUN_DIR/pgbouncer-$mode.stderr" 2>&1 &
    PIDS+=($!); PID_OF[pgbouncer-$mode]=$!; PORT_OF[pgbouncer-$mode]=$port
    wait_port "$port" "$!" "pgbouncer-$mode" || { cat "$RUN_DIR/pgbouncer-$mode.stderr"; die "pgbouncer $mode failed"; }

    port=$([[ $mode == session ]] && echo "$RLS_S_PORT" || echo "$RLS_T_PORT")
    RUST_LOG=info "$RLSGATE" serve --config "$RUN_DIR/rlsgate-$mode.toml" >"$RUN_DIR/rlsgate-$mode.log" 2>&1 &
    PIDS+=($!); PID_OF[rlsgate-$mode]=$!; PORT_OF[rlsgate-$mode]=$port
    if ! wait_port "$port" "$!" "rlsgate-$mode"; then
        tail -5 "$RUN_DIR/rlsgate-$mode.log"
        echo "rlsgate serve ($mode pooling) did not start: $(tail -3 "$RUN_DIR/rlsgate-$mode.log" | tr '\n' ' ')" >>"$RUN_DIR/checks.txt"
        unset "PID_OF[rlsgate-$mode]"
    fi
done
for t in pgbouncer-session pgbouncer-transaction rlsgate-session rlsgate-transaction; do
    [[ -n ${PID_OF[$t]:-} ]] && rss_start "$t"
done
PORT_OF[direct]=$PG_PORT

TOKEN=$(RLSGATE_BENCH_SECRET=$JWT_SECRET "$RLSGATE" token --secret-env RLSGATE_BENCH_SECRET \
    --tenant "$TENANT" --sub bench --ttl 2h)

# Per-target connection environment (passed to pgbench/psql) and script choice.
target_env() { # target -> NAME=VALUE lines
    case $1 in
        direct) echo "PGPASSWORD=$PG_PASSWORD"; echo "PGOPTIONS=-c app.current_tenant=$TENANT" ;;
        pgbouncer-*) echo "PGPASSWORD=$PG_PASSWORD"; echo "PGOPTIONS=" ;;
        rlsgate-*) echo "PGPASSWORD=$TOKEN"; echo "PGOPTIONS=" ;;
    esac
}
target_env_shown() {
    case $1 in
        direct) echo "PGPASSWORD=<app_rls password> PGOPTIONS='-c app.current_tenant=$TENANT'" ;;
        pgbouncer-*) echo "PGPASSWORD=<app_rls password>" ;;
        rlsgate-*) echo "PGPASSWORD=<JWT: rlsgate token --tenant $TENANT --sub bench --ttl 2h>" ;;
    esac
}
script_for() { # target workload
    local base
    case $2 in read-fixed) base=tenant_read_fixed ;; read-*|churn-*) base=tenant_read ;;
               tpcb-*) base=tenant_tpcb ;; esac
    if [[ $1 == pgbouncer-* ]]; then
        case $2 in read-extended|read-prepared) echo "bench/${base}_pgbouncer_pipeline.sql" ;;
                   *) echo "bench/${base}_pgbouncer.sql" ;; esac
    else echo "bench/$base.sql"; fi
}
with_env() { local -a e; mapfile -t e < <(target_env "$1"); shift; env "${e[@]}" "$@"; }

# ------------------------------------------------------------------ sanity checks
log "sanity checks: rows of pgbench_accounts visible through each target"
TARGETS=(direct pgbouncer-session pgbouncer-transaction rlsgate-session rlsgate-transaction)
COUNT_SQL="SELECT count(*) || ' rows, tenants: ' || coalesce(string_agg(DISTINCT tenant_id, ','), 'none') FROM pgbench_accounts"
check() { # target label sql [last: keep only the last result line]
    local out
    out=$(cd "$ROOT" && with_env "$1" timeout 30 "$PSQL" -X -At -h 127.0.0.1 -p "${PORT_OF[$1]}" -U app_rls -d app -c "$3" 2>&1) || true
    [[ ${4:-} == last ]] && out=$(tail -n 1 <<<"$out")
    out=$(tr '\n' ' ' <<<"$out")
    echo "$1, $2: $out" | tee -a "$RUN_DIR/checks.txt"
}
for t in "${TARGETS[@]}"; do
    case $t in
        pgbouncer-*)
            check "$t" "app sets nothing" "$COUNT_SQL"
            check "$t" "app sends set_config(tenant, true) in the same Query" \
                "SELECT set_config('app.current_tenant', '$TENANT', true); $COUNT_SQL" last ;;
        *) check "$t" "tenant from $([[ $t == direct ]] && echo PGOPTIONS || echo the JWT)" "$COUNT_SQL" ;;
    esac
done
echo "expected: $((SCALE * 100000 / 8)) rows, tenants: $TENANT (scale $SCALE, 8 tenants)" | tee -a "$RUN_DIR/checks.txt"

# ------------------------------------------------------------------ workloads
cd "$ROOT"
for w in $WORKLOADS; do
  for round in $(seq "$ROUNDS"); do
    log "workload $w, round $round/$ROUNDS"
    case $w in
        read-simple|read-fixed) args=(-M simple -T "$DURATION") ;;
        read-extended) args=(-M extended -T "$DURATION") ;;
        read-prepared) args=(-M prepared -T "$DURATION") ;;
        tpcb-simple) args=(-M simple -T "$DURATION") ;;
        churn-simple) args=(-M simple -C -T "$CHURN_DURATION") ;;
        *) die "unknown workload $w" ;;
    esac
    for t in "${TARGETS[@]}"; do
        if [[ $t != direct && -z ${PID_OF[$t]:-} ]]; then
            log "  $t not running, skipped"; continue
        fi
        script=$(script_for "$t" "$w")
        cmd=("$PGBENCH" -h 127.0.0.1 -p "${PORT_OF[$t]}" -U app_rls -n -c "$CLIENTS" -j "$THREADS"
             -s "$SCALE" "${args[@]}" -f "$script" app)
        shown="$(target_env_shown "$t") pgbench -h 127.0.0.1 -p <$t port> -U app_rls -n -c $CLIENTS -j $THREADS -s $SCALE ${args[*]} -f $script app"
        pidargs=()
        [[ $t != direct ]] && pidargs=(--pid "${PID_OF[$t]}")
        mapfile -t envargs < <(target_env "$t" | sed 's/^/--env=/')
        perf_pid=""
        if [[ ${BENCH_PERF:-0} == 1 && $t == rlsgate-* ]] && command -v perf >/dev/null; then
            secs=$DURATION; [[ $w == churn-* ]] && secs=$CHURN_DURATION
            perf record -q -F 999 -p "${PID_OF[$t]}" -o "$RUN_DIR/perf-$t-$w-$round.data" \
                -- sleep $((secs > 1 ? secs - 1 : 1)) >/dev/null 2>&1 &
            perf_pid=$!
        fi
        $PY pgbench --out "$RESULTS" --target "$t" --workload "$w" --round "$round" "${pidargs[@]}" "${envargs[@]}" \
            --show "$shown" --timeout $((DURATION + CHURN_DURATION + 60)) -- "${cmd[@]}"
        if [[ -n $perf_pid ]]; then
            wait "$perf_pid" || true
            mkdir -p "$HERE/results"
            { echo "# perf: $t / $w, round $round ($(date -u +%F)), flat profile of the rlsgate process"
              echo "# $shown"
              perf report -i "$RUN_DIR/perf-$t-$w-$round.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
                  grep -v '^#' | grep -v '^$' | sed 's/ *-  *- *$//; s/ *$//' | head -40
            } >"$HERE/results/$(date -u +%F)-perf-$t-$w.txt" || true
        fi
    done
  done
done

# Proxy health after the pgbench runs (before the idle test, which provokes 53300s on purpose).
for t in pgbouncer-session pgbouncer-transaction rlsgate-session rlsgate-transaction; do
    pid=${PID_OF[$t]:-}
    [[ -n $pid ]] || continue
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$t: process DIED during the benchmark" >>"$RUN_DIR/checks.txt"
    fi
    f=$RUN_DIR/$t.log; [[ $t == pgbouncer-* ]] && f=$RUN_DIR/$t.stderr
    n=$(sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -c -E ' (ERROR|WARN|WARNING) |panicked|ended with an error' || true)
    if [[ ${n:-0} -gt 0 ]]; then
        echo "$t log: $n ERROR/WARN lines during the pgbench runs, first: \`$(sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -m1 -E ' (ERROR|WARN|WARNING) |panicked|ended with an error' | cut -c1-400)\`" >>"$RUN_DIR/checks.txt"
    else
        echo "$t log: no ERROR/WARN lines during the pgbench runs" >>"$RUN_DIR/checks.txt"
    fi
done

# ------------------------------------------------------------------ memory
log "memory: peak RSS, then $IDLE_CLIENTS idle clients per proxy"
for t in pgbouncer-session pgbouncer-transaction rlsgate-session rlsgate-transaction; do
    pid=${PID_OF[$t]:-}
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || continue
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    echo "{\"kind\":\"mem\",\"target\":\"$t\",\"rss_start_kb\":$(cat "$RUN_DIR/$t.rss_start"),\"hwm_end_kb\":$hwm}" >>"$RESULTS"
done
for t in pgbouncer-session pgbouncer-transaction rlsgate-session rlsgate-transaction; do
    pid=${PID_OF[$t]:-}
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || continue
    pw=$PG_PASSWORD; [[ $t == rlsgate-* ]] && pw=$TOKEN
    $PY idle --out "$RESULTS" --target "$t" --pid "$pid" --port "${PORT_OF[$t]}" --user app_rls \
        --db app --password "$pw" -n "$IDLE_CLIENTS" --hold 2 --timeout 15 || log "idle test for $t failed"
done

echo "pgbench_history rows of other tenants (must be 0): $(su_psql -d app -At -c "SELECT count(*) FROM pgbench_history WHERE tenant_id <> '$TENANT'")" >>"$RUN_DIR/checks.txt"

# ------------------------------------------------------------------ report
cat >"$RUN_DIR/setup.txt" <<EOF
PostgreSQL 15 in a temp dir on 127.0.0.1:<free port>, settings as src/dev/pgtemp.rs (fsync=off, full_page_writes=off, synchronous_commit=off, shared_buffers=128MB, max_connections=200).
\`pgbench -i -s $SCALE\` as the owner (postgres); \`tenant_id text NOT NULL DEFAULT current_setting('app.current_tenant')\` on pgbench_accounts/branches/tellers/history; row x belongs to tenant 't' || ((x - 1) % 8 + 1) (8 tenants, $((SCALE * 100000 / 8)) accounts each); ENABLE + FORCE RLS with policy \`tenant_id = current_setting('app.current_tenant', true)\` (USING and WITH CHECK) on all four tables.
All clients connect as \`app_rls\` (NOSUPERUSER NOBYPASSRLS, DML grants only) over loopback TCP, tenant $TENANT; the scripts pick only $TENANT's rows (aid/bid/tid = 8k+1), so every SELECT returns one row and every UPDATE hits one row.
**direct**: PostgreSQL itself, tenant via \`PGOPTIONS='-c app.current_tenant=$TENANT'\`, SCRAM-SHA-256 password auth; scripts \`bench/tenant_read.sql\`, \`bench/tenant_tpcb.sql\`.
**PgBouncer** $($PGBOUNCER --version | head -1 | awk '{print $2}') (auth_type = plain, i.e. cleartext password like rlsgate's token, auth_file, default_pool_size = $POOL_SIZE, server_reset_query default DISCARD ALL in session mode, logging defaults): PgBouncer cannot set the tenant, so the app does: \`set_config('app.current_tenant', '$TENANT', true)\` travels in the same round trip as the statement (\`\\;\` compound Query for -M simple, a pgbench pipeline for -M extended/prepared: \`bench/*_pgbouncer*.sql\`). That is the cheapest way that is correct in transaction pooling; it is *not* enforcement (the client can set any tenant).
**rlsgate** (release build; [tls] mode = "disable" so all three are plaintext loopback; HS256 JWT as the password, verified on every connection; [pool] size = $POOL_SIZE; RUST_LOG=info): same scripts as direct; the tenant comes from the token.
pgbench: \`-c $CLIENTS -j $THREADS -T $DURATION\` per run (connection churn: \`-C -T $CHURN_DURATION\`), $ROUNDS rounds: workload by workload, each round runs every target one after the other, so slow drifts in machine load hit all targets alike; all proxies are up for the whole run. Proxy CPU from /proc/PID/stat, peak RSS from /proc/PID/status VmHWM.
Connection churn (\`-C\`, a new connection per transaction) includes each target's client authentication: cleartext password (PgBouncer) and cleartext JWT + HS256 verification (rlsgate) over loopback, both proxies reusing pooled server connections (reset with DISCARD ALL in session mode); direct pays what an unpooled app pays: a new backend process plus SCRAM-SHA-256 (4096 PBKDF2 iterations in pgbench and in PostgreSQL) per connection.
EOF
ELAPSED=$(( $(date +%s) - START_TS ))
export BM_DATE BM_COMMAND BM_GIT BM_ELAPSED BM_CPU BM_NPROC BM_MEM BM_KERNEL BM_PGV BM_PGBV BM_PGBOUNCERV BM_RLSV BM_RUNDIR BM_PARAMS
BM_DATE=$(date -u +%Y-%m-%d)
BM_COMMAND="bench/run.sh"
for v in BENCH_PERF BENCH_DURATION BENCH_CHURN_DURATION BENCH_ROUNDS BENCH_CLIENTS BENCH_THREADS BENCH_SCALE BENCH_POOL_SIZE BENCH_IDLE_CLIENTS BENCH_WORKLOADS; do
    [[ -n ${!v:-} ]] && BM_COMMAND="$v='${!v}' $BM_COMMAND"
done
BM_GIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$( [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] && echo ' + uncommitted changes')"
BM_ELAPSED=$ELAPSED
BM_CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
BM_NPROC=$(nproc)
BM_MEM=$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
BM_KERNEL=$(uname -sr)
BM_PGV=$("$PG_BIN/postgres" --version)
BM_PGBV=$("$PGBENCH" --version)
BM_PGBOUNCERV=$($PGBOUNCER --version | head -1)
BM_RLSV=$("$RLSGATE" --version 2>/dev/null || echo "rlsgate (git $BM_GIT)")
BM_RUNDIR=$RUN_DIR
export BM_LOAD="$LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
BM_PARAMS="scale $SCALE, -c $CLIENTS -j $THREADS, -T $DURATION s per run (churn -C -T $CHURN_DURATION s), $ROUNDS interleaved rounds, pool size $POOL_SIZE, $IDLE_CLIENTS idle clients; total $ELAPSED s"
python3 - "$RUN_DIR/meta.json" <<'EOF'
import json, os, sys
e = os.environ
json.dump({"date": e["BM_DATE"], "command": e["BM_COMMAND"], "git": e["BM_GIT"],
           "elapsed_s": int(e["BM_ELAPSED"]), "cpu_model": e["BM_CPU"], "nproc": e["BM_NPROC"],
           "mem_total": e["BM_MEM"], "kernel": e["BM_KERNEL"], "pg_version": e["BM_PGV"],
           "pgbench_version": e["BM_PGBV"], "pgbouncer_version": e["BM_PGBOUNCERV"],
           "rlsgate_version": e["BM_RLSV"], "load": e["BM_LOAD"], "run_dir": e["BM_RUNDIR"], "params": e["BM_PARAMS"]},
          open(sys.argv[1], "w"), indent=1)
EOF
mkdir -p "$HERE/results"
REPORT=$HERE/results/$BM_DATE.md
[[ $BENCH_UPDATE_DOCS == 1 ]] || REPORT=$HERE/results/$BM_DATE-partial.md
docs_args=()
[[ $BENCH_UPDATE_DOCS == 1 ]] && docs_args=(--docs "$ROOT/docs/benchmarks.md")
$PY report --dir "$RUN_DIR" --out "$REPORT" "${docs_args[@]}"
log "done in ${ELAPSED}s: $REPORT"
