#!/usr/bin/env bash
# Where Postern's CPU goes: relays MESSAGES of SIZE bytes (smtp-source → postern
# → smtp-sink, the shipped defaults: content workers and tracking log on) and
# prints the rate, Postern's own CPU per message (its process tree's user +
# system time) and, with perf (Debian linux-perf), the share of each thread
# and the hottest symbols over the whole run.
#
#   benches/profile.sh [MESSAGES] [SIZE]        (default 20000 4096)
#   PERF=0 benches/profile.sh ...               (rate and CPU only)
set -euo pipefail
N=${1:-20000}
SIZE=${2:-4096}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/postern}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q)
W=$(mktemp -d /tmp/postern-profile.XXXXXX)
SINK_PORT=${SINK_PORT:-24025} SMTP=${SMTP_PORT:-24026} ADMIN=${ADMIN_PORT:-24028}
GW="" SINK="" PP=""
cleanup() {
  [ -n "$PP" ] && kill "$PP" 2>/dev/null || true
  [ -n "$GW" ] && { kill -9 -- "-$GW"; wait "$GW"; } 2>/dev/null || true
  [ -n "$SINK" ] && kill "$SINK" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
smtp-sink -c -u nobody "127.0.0.1:$SINK_PORT" 256 > "$W/sink.out" 2>&1 &
SINK=$!
cat > "$W/postern.toml" <<CONF
[server]
hostname = "bench.example.test"
listen = ["127.0.0.1:$SMTP"]
[queue]
path = "$W/queue"
[delivery]
starttls = false
[[route]]
domain = "*"
hosts = ["127.0.0.1:$SINK_PORT"]
[admin]
listen = "127.0.0.1:$ADMIN"
CONF
POSTERN_LOG=warn setsid "$BIN" run --config "$W/postern.toml" 2> "$W/log" &
GW=$!
until curl -sf "127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1; do
  kill -0 "$GW" 2>/dev/null || { tail -5 "$W/log" >&2; exit 1; }
  sleep 0.05
done
sleep 0.5
ticks() { # user + system clock ticks of the tree, live and reaped children
  local t=0
  for p in $(pgrep -g "$GW"); do
    t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
delivered() { tr '\r' '\n' < "$W/sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2; }
if [ "${PERF:-1}" != 0 ] && command -v perf >/dev/null; then
  perf record -F 999 -g -o "$W/perf.data" -p "$(pgrep -g "$GW" | paste -sd,)" >/dev/null 2>&1 &
  PP=$!
  sleep 0.5
fi
c0=$(ticks); t0=$(date +%s.%N)
smtp-source -s 10 -m "$N" -l "$SIZE" -f bench@example.test -t user@example.test "127.0.0.1:$SMTP"
until [ "$(delivered)" = "$N" ]; do sleep 0.05; done
t1=$(date +%s.%N); c1=$(ticks)
printf '%d messages of %d bytes: %.0f msg/s, Postern CPU %.3f ms per message\n' "$N" "$SIZE" \
  "$(echo "$N / ($t1 - $t0)" | bc -l)" "$(echo "($c1 - $c0) * 1000 / $(getconf CLK_TCK) / $N" | bc -l)"
if [ -n "$PP" ]; then
  kill -INT "$PP"; wait "$PP" 2>/dev/null || true; PP=""
  echo "-- share of samples by thread"
  perf report -i "$W/perf.data" --no-children --sort comm -g none --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -12
  echo "-- hottest symbols (self)"
  perf report -i "$W/perf.data" --no-children --sort dso,sym -g none --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -25
fi
