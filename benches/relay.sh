#!/usr/bin/env bash
# Relay throughput benchmark: Postern vs Postfix, side by side, same run.
#
#   [ROUNDS=3] [BASELINE_BIN=path] benches/relay.sh [MESSAGES] [SIZE_BYTES] [SESSIONS]
#   (defaults 5000 4096 10)
#
# Load generator: Postfix's smtp-source. Next hop: Postfix's smtp-sink.
# Three runs against a fresh sink each time:
#   direct   smtp-source -> smtp-sink                     (the ceiling)
#   postern  smtp-source -> postern (fsync before 250) -> smtp-sink
#   inproc   the same with workers.processes = 0 (content in the gateway)
#   notrack  postern with the tracking log off (the cost of tracking)
#   signed   postern signing every message with DKIM (RSA-SHA256, 2048 bits)
#   baseline with BASELINE_BIN set: another postern binary (e.g. a release
#            build of an earlier commit), same settings as postern,
#            alternating with it round by round (a regression check)
#   postfix  smtp-source -> postfix (loopback relay)   -> smtp-sink
# For each it prints accepted/s (smtp-source finished: every message got its
# 250), delivered/s (the sink has counted every message) and the whole
# machine's CPU per message (ms, from /proc/stat: load generator, sink and
# the MTA between them), then the ratios, Postern's own CPU per message (its
# process tree's user + system time) and its resident memory.
# Needs: Debian packages postfix (smtp-source, smtp-sink, postfix) and a
# release build (the script runs cargo build --release).
set -euo pipefail
N=${1:-5000}
SIZE=${2:-4096}
CONC=${3:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/postern-bench.XXXXXX)
chmod 755 "$WORK"   # Postfix's unprivileged daemons must reach their queue
SINK_PORT=${SINK_PORT:-20025}
POSTERN_PORT=${POSTERN_PORT:-20026}
ROUNDS=${ROUNDS:-1}     # Postern runs (workers, in-process) alternate this many times
BASELINE_BIN=${BASELINE_BIN:-}   # a second postern binary to compare, same run
POSTFIX_PORT=${POSTFIX_PORT:-20027}
ADMIN_PORT=${ADMIN_PORT:-20028}
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/postfix/main.cf" ] && postfix -c "$WORK/postfix" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for cmd in smtp-source smtp-sink postfix; do
  command -v "$cmd" >/dev/null || { echo "missing $cmd: apt-get install postfix" >&2; exit 1; }
done

(cd "$ROOT" && cargo build --release -q)
BIN="$ROOT/target/release/postern"

now() { date +%s.%N; }

# Starts a fresh counting sink; its output file is $WORK/sink.out.
start_sink() {
  : > "$WORK/sink.out"
  smtp-sink -c -u nobody "127.0.0.1:$SINK_PORT" 256 > "$WORK/sink.out" 2>&1 &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  sleep 0.3
}

stop_sink() { kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; }

sink_count() {
  tr '\r' '\n' < "$WORK/sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2
}

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# CPU time the whole machine has spent (clock ticks, all cores), idle and
# I/O wait excluded.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
TICK_MS=$(echo "1000 / $(getconf CLK_TCK)" | bc -l)

# run NAME PORT: prints "NAME accepted/s delivered/s machine-CPU-ms/msg"
run() {
  local name=$1 port=$2 t0 t1 t2 c m0 m1
  m0=$(machine_ticks)
  t0=$(now)
  smtp-source -s "$CONC" -m "$N" -l "$SIZE" -f bench@example.test -t user@example.test "127.0.0.1:$port"
  t1=$(now)
  while :; do
    c=$(sink_count); c=${c:-0}
    [ "$c" -ge "$N" ] && break
    sleep 0.02
  done
  t2=$(now)
  m1=$(machine_ticks)
  echo "$name $(echo "$N / ($t1 - $t0)" | bc -l) $(echo "$N / ($t2 - $t0)" | bc -l) $(echo "($m1 - $m0) * $TICK_MS / $N" | bc -l)"
}

results=()

# 1. direct
start_sink
results+=("$(run direct "$SINK_PORT")")
stop_sink

# 2. postern, content processing in worker processes (the default), then
#    in-process (workers.processes = 0): the cost of crash isolation.
run_postern() {
  local name=$1 workers=$2 tracking=${3:-file} bin=${4:-$BIN} extra=${5:-}
  start_sink
  rm -rf "$WORK/queue"
  cat > "$WORK/postern.toml" <<CONF
[server]
hostname = "bench.example.test"
listen = ["127.0.0.1:$POSTERN_PORT"]
[queue]
path = "$WORK/queue"
[delivery]
starttls = false
[workers]
processes = $workers
[tracking]
destination = "$tracking"
[[route]]
domain = "*"
hosts = ["127.0.0.1:$SINK_PORT"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
$extra
CONF
  POSTERN_LOG=warn "$bin" run --config "$WORK/postern.toml" 2> "$WORK/postern.log" &
  POSTERN_PID=$!
  PIDS+=("$POSTERN_PID")
  wait_port "$POSTERN_PORT"
  sleep 0.5
  # Resident memory of the whole tree: supervisor, gateway, workers.
  tree_rss() {
    local t=0 v pgid
    pgid=$(ps -o pgid= "$POSTERN_PID" | tr -d ' ')
    for p in $(pgrep -g "$pgid" postern 2>/dev/null); do
      v=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null)
      t=$((t + ${v:-0}))
    done
    echo "$t"
  }
  # CPU time of the whole tree (clock ticks), live and reaped children.
  tree_ticks() {
    local t=0 pgid
    pgid=$(ps -o pgid= "$POSTERN_PID" | tr -d ' ')
    for p in $(pgrep -g "$pgid" postern 2>/dev/null); do
      t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
  }
  local idle; idle=$(tree_rss)
  local c0; c0=$(tree_ticks)
  results+=("$(run "$name" "$POSTERN_PORT")")
  local c1; c1=$(tree_ticks)
  local peak; peak=$(tree_rss)
  OWN+=("$name $(echo "($c1 - $c0) * $TICK_MS / $N" | bc -l)")
  RSS+=("$name idle ${idle} KiB, after the run ${peak} KiB (supervisor + gateway + workers)")
  kill "$POSTERN_PID"; wait "$POSTERN_PID" 2>/dev/null || true
  stop_sink
}
RSS=()
OWN=()
# A DKIM key for the sender's domain (bench@example.test).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/dkim.pem" 2>/dev/null
SIGNED="[[convert.dkim]]
domain = \"example.test\"
selector = \"bench\"
key_file = \"$WORK/dkim.pem\""
for _ in $(seq 1 "$ROUNDS"); do
  run_postern postern 2
  [ -n "$BASELINE_BIN" ] && run_postern baseline 2 file "$BASELINE_BIN"
  run_postern inproc 0
  run_postern notrack 2 off
  run_postern signed 2 file "$BIN" "$SIGNED"
done

# 3. postfix as a loopback relay (private instance in $WORK)
start_sink
PF="$WORK/postfix"
mkdir -p "$PF" "$WORK/pfq" "$WORK/pfdata"
cat > "$PF/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $WORK/pfq
data_directory = $WORK/pfdata
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.example.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
maillog_file = /dev/stdout
alias_maps =
alias_database =
CONF
cat > "$PF/master.cf" <<CONF
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
CONF
chown postfix "$WORK/pfdata"
postfix -c "$PF" start-fg > "$WORK/postfix.log" 2>&1 &
PIDS+=("$!")
wait_port "$POSTFIX_PORT" || { cat "$WORK/postfix.log" >&2; exit 1; }
sleep 1   # master binds before its smtpd is ready to serve
results+=("$(run postfix "$POSTFIX_PORT")")
postfix -c "$PF" stop >/dev/null 2>&1 || true
stop_sink

echo
echo "messages=$N size=$SIZE sessions=$CONC cores=$(nproc)"
printf '%-8s %12s %12s %12s\n' target accepted/s delivered/s cpu_ms/msg
declare -A ACC DEL
# The median of each target's runs (ROUNDS > 1 repeats the Postern runs).
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
for r in "${results[@]}"; do
  read -r name a d m <<<"$r"
  printf '%-8s %12.0f %12.0f %12.3f\n' "$name" "$a" "$d" "$m"
done
declare -A CPU OWNCPU
for name in direct postern baseline inproc notrack signed postfix; do
  CPU[$name]=$(printf '%s\n' "${results[@]}" | awk -v n="$name" '$1==n {print $4}' | median)
  OWNCPU[$name]=$(printf '%s\n' "${OWN[@]}" | awk -v n="$name" '$1==n {print $2}' | median)
  ACC[$name]=$(printf '%s\n' "${results[@]}" | awk -v n="$name" '$1==n {print $2}' | median)
  DEL[$name]=$(printf '%s\n' "${results[@]}" | awk -v n="$name" '$1==n {print $3}' | median)
done
printf 'median postern %.0f/%.0f, inproc %.0f/%.0f (accepted/delivered per second)\n' \
  "${ACC[postern]}" "${DEL[postern]}" "${ACC[inproc]}" "${DEL[inproc]}"
printf 'postern/postfix: accepted %.2fx, delivered %.2fx\n' \
  "$(echo "${ACC[postern]} / ${ACC[postfix]}" | bc -l)" "$(echo "${DEL[postern]} / ${DEL[postfix]}" | bc -l)"
printf 'postern/direct:  accepted %.2fx, delivered %.2fx\n' \
  "$(echo "${ACC[postern]} / ${ACC[direct]}" | bc -l)" "$(echo "${DEL[postern]} / ${DEL[direct]}" | bc -l)"
printf 'isolation cost (workers vs in-process): accepted %.1f%%, delivered %.1f%%\n' \
  "$(echo "(1 - ${ACC[postern]} / ${ACC[inproc]}) * 100" | bc -l)" "$(echo "(1 - ${DEL[postern]} / ${DEL[inproc]}) * 100" | bc -l)"
printf 'tracking log cost (file vs off): accepted %.1f%%, delivered %.1f%%\n' \
  "$(echo "(1 - ${ACC[postern]} / ${ACC[notrack]}) * 100" | bc -l)" "$(echo "(1 - ${DEL[postern]} / ${DEL[notrack]}) * 100" | bc -l)"
if [ -n "$BASELINE_BIN" ]; then
  printf 'postern/baseline (%s): accepted %.3fx, delivered %.3fx\n' "$BASELINE_BIN" \
    "$(echo "${ACC[postern]} / ${ACC[baseline]}" | bc -l)" "$(echo "${DEL[postern]} / ${DEL[baseline]}" | bc -l)"
fi
printf 'signed/unsigned (DKIM RSA-2048 on every message): accepted %.2fx, delivered %.2fx\n' \
  "$(echo "${ACC[signed]} / ${ACC[postern]}" | bc -l)" "$(echo "${DEL[signed]} / ${DEL[postern]}" | bc -l)"
printf 'machine CPU ms/msg (median): direct %.3f, postern %.3f, signed %.3f, postfix %.3f\n' \
  "${CPU[direct]}" "${CPU[postern]}" "${CPU[signed]}" "${CPU[postfix]}"
printf "Postern's own CPU ms/msg (its process tree, median): postern %.3f, inproc %.3f, notrack %.3f, signed %.3f\n" \
  "${OWNCPU[postern]}" "${OWNCPU[inproc]}" "${OWNCPU[notrack]}" "${OWNCPU[signed]}"
for r in "${RSS[@]}"; do echo "RSS $r"; done
