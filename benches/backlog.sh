#!/usr/bin/env bash
# Backlog drain against live relay, same build, same run (issue 13).
#
#   benches/backlog.sh [MESSAGES] [BIN ...]      (default 5000, target/release/postern)
#
# For each binary: a queue filled with MESSAGES × 4 KB while the next hop is
# down (retry in 10 minutes), the gateway restarted (time to ready), the hop
# brought up and `postern queue retry --all` (drain time and rate); then, on a
# fresh queue, the same messages relayed live with the hop up (live rate).
# Prints each step's time, the tree's resident memory and the queue's size
# on disk, and drain/live. Exits non-zero if a message is missing at the
# sink (CI runs it small as a does-nothing-get-lost check). Needs smtp-source
# and smtp-sink (Debian postfix), bc.
set -euo pipefail
N=${1:-5000}
shift || true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || { (cd "$ROOT" && cargo build --release -q); BINS=("$ROOT/target/release/postern"); }
WORK=$(mktemp -d /tmp/postern-backlog.XXXXXX)
SMTP=${SMTP_PORT:-21025} ADMIN=${ADMIN_PORT:-21026} HOP=${HOP_PORT:-21027}
GW="" SINK=""
cleanup() {
  [ -n "$GW" ] && kill -9 -- "-$GW" 2>/dev/null || true
  [ -n "$SINK" ] && kill "$SINK" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
rss_mib() { # resident memory of the process group $1, MiB
  ps -o rss= -g "$1" 2>/dev/null | awk '{s += $1} END {printf "%.0f", s / 1024}'
}
metric() { # value of a counter line
  curl -s "127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}' | head -1
}
delivered() { metric 'postern_recipients_delivered_total{class="internet"}'; }
start_gw() { # bin config
  setsid "$1" run --config "$2" 2>>"$WORK/log" >/dev/null &
  GW=$!
  local t0; t0=$(now)
  for _ in $(seq 1 600); do
    curl -sf "127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  READY=$(secs "$t0" "$(now)")
}
stop_gw() { kill -TERM "$GW" 2>/dev/null; wait "$GW" 2>/dev/null || true; GW=""; }
LIMIT=${LIMIT:-600}   # seconds a step may take before the run fails
wait_delivered() { # count
  local t0; t0=$(date +%s)
  until [ "$(delivered)" = "$1" ]; do
    [ $(( $(date +%s) - t0 )) -lt "$LIMIT" ] || { echo "FAIL: $(delivered) of $1 delivered after ${LIMIT}s" >&2; exit 1; }
    sleep 0.1
  done
}
config() { # dir
  cat > "$1/postern.toml" <<EOF
[server]
hostname = "bench.example.test"
listen = ["127.0.0.1:$SMTP"]
[queue]
path = "$1/queue"
retry_intervals = ["10m"]
[admin]
listen = "127.0.0.1:$ADMIN"
[delivery]
starttls = false
[[route]]
domain = "*"
hosts = ["127.0.0.1:$HOP"]
EOF
}
printf '%-10s %8s %10s %10s %9s %9s %9s %9s\n' step messages seconds msg/s rss_MiB queue_MiB ready_s ""
for BIN in "${BINS[@]}"; do
  echo "== $BIN"
  D="$WORK/b"; rm -rf "$D"; mkdir -p "$D"; config "$D"
  # Fill with the hop down.
  start_gw "$BIN" "$D/postern.toml"
  t0=$(now)
  smtp-source -s 10 -m "$N" -l 4096 -f a@example.test -t b@remote.test "127.0.0.1:$SMTP"
  t=$(secs "$t0" "$(now)")
  printf '%-10s %8d %10.2f %10.0f %9s %9s\n' fill "$N" "$t" "$(echo "$N / $t" | bc -l)" \
    "$(rss_mib "$GW")" "$(du -sm "$D/queue" | cut -f1)"
  stop_gw
  # Restart with the backlog.
  start_gw "$BIN" "$D/postern.toml"
  printf '%-10s %8d %10s %10s %9s %9s %9.2f\n' restart "$N" - - "$(rss_mib "$GW")" \
    "$(du -sm "$D/queue" | cut -f1)" "$READY"
  # The hop comes up; everything is retried now.
  smtp-sink -u nobody "127.0.0.1:$HOP" 256 >/dev/null 2>&1 &
  SINK=$!
  sleep 0.2
  t0=$(now)
  "$BIN" queue --config "$D/postern.toml" retry --all >/dev/null
  peak=0 t1=$(date +%s)
  until [ "$(delivered)" = "$N" ]; do
    [ $(( $(date +%s) - t1 )) -lt "$LIMIT" ] || { echo "FAIL: $(delivered) of $N delivered after ${LIMIT}s" >&2; exit 1; }
    r=$(rss_mib "$GW"); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
  done
  t=$(secs "$t0" "$(now)")
  DRAIN=$(echo "$N / $t" | bc -l)
  printf '%-10s %8d %10.2f %10.0f %9s %9s\n' drain "$N" "$t" "$DRAIN" "$peak" \
    "$(du -sm "$D/queue" | cut -f1)"
  stop_gw
  # Live: a fresh queue, the hop up.
  rm -rf "$D/queue"
  start_gw "$BIN" "$D/postern.toml"
  t0=$(now)
  smtp-source -s 10 -m "$N" -l 4096 -f a@example.test -t b@remote.test "127.0.0.1:$SMTP"
  wait_delivered "$N"
  t=$(secs "$t0" "$(now)")
  LIVE=$(echo "$N / $t" | bc -l)
  printf '%-10s %8d %10.2f %10.0f %9s %9s\n' live "$N" "$t" "$LIVE" "$(rss_mib "$GW")" \
    "$(du -sm "$D/queue" | cut -f1)"
  stop_gw
  kill "$SINK" 2>/dev/null || true; SINK=""
  printf 'drain/live = %.2f\n' "$(echo "$DRAIN / $LIVE" | bc -l)"
done
