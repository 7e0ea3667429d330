#!/usr/bin/env bash
# Backlog drain against live relay, same build, same run (issue 13).
#
#   [LIMIT=600] [SKIP_LIVE=1] benches/backlog.sh [MESSAGES] [BIN ...]
#   (default 5000, target/release/postern; LIMIT: seconds a step may take)
#
# For each binary: a queue filled with MESSAGES × 4 KB while the next hop is
# down (retry in 10 minutes), the gateway stopped (SIGTERM) and restarted
# (time to ready), then killed (SIGKILL) and started again (time to ready
# after a crash), the hop brought up and `postern queue retry --all` (drain
# time and rate; the queue's size once the drain has settled); then, on a
# fresh queue, the same messages relayed live with the hop up (live rate).
# Prints each step's time, the tree's resident memory (peak while draining)
# and the queue's size on disk: queue_MiB is the store (sled database, body
# segments and any old-layout spool files; payload: MESSAGES × 4 KB), log_MiB
# the tracking log beside it with its rotations; then drain/live. Exits non-zero if a message is missing at the
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
  [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
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
store_mib() { # the queue's store: the queue directory without the tracking log and its rotations
  local q="$1/queue"
  echo $(( ($(du -sb "$q" | cut -f1) - $(cat "$q"/tracking.log* 2>/dev/null | wc -c)) / 1048576 ))
}
log_mib() { echo $(( $(cat "$1"/queue/tracking.log* 2>/dev/null | wc -c) / 1048576 )); }
start_gw() { # bin config
  setsid "$1" run --config "$2" 2>>"$WORK/log" >/dev/null &
  GW=$!
  local t0; t0=$(now)
  until curl -sf "127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1; do
    kill -0 "$GW" 2>/dev/null || { echo "FAIL: the gateway exited:" >&2; tail -5 "$WORK/log" >&2; exit 1; }
    [ "$(echo "$(secs "$t0" "$(now)") < ${LIMIT:-600}" | bc)" = 1 ] || { echo "FAIL: not ready" >&2; exit 1; }
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
max_messages = 100000000
[admin]
listen = "127.0.0.1:$ADMIN"
[delivery]
starttls = false
[[route]]
domain = "*"
hosts = ["127.0.0.1:$HOP"]
EOF
}
printf 'payload: %d MiB (%d x 4 KB)\n' $(( N * 4096 / 1048576 )) "$N"
printf '%-10s %8s %10s %10s %9s %9s %9s %9s\n' step messages seconds msg/s rss_MiB queue_MiB log_MiB ready_s
for BIN in "${BINS[@]}"; do
  echo "== $BIN"
  D="$WORK/b"; rm -rf "$D"; mkdir -p "$D"; config "$D"
  # Fill with the hop down.
  start_gw "$BIN" "$D/postern.toml"
  t0=$(now)
  smtp-source -s 10 -m "$N" -l 4096 -f a@example.test -t b@remote.test "127.0.0.1:$SMTP"
  t=$(secs "$t0" "$(now)")
  printf '%-10s %8d %10.2f %10.0f %9s %9s %9s\n' fill "$N" "$t" "$(echo "$N / $t" | bc -l)" \
    "$(rss_mib "$GW")" "$(store_mib "$D")" "$(log_mib "$D")"
  stop_gw
  # Restart with the backlog.
  start_gw "$BIN" "$D/postern.toml"
  printf '%-10s %8d %10s %10s %9s %9s %9s %9.2f\n' restart "$N" - - "$(rss_mib "$GW")" \
    "$(store_mib "$D")" "$(log_mib "$D")" "$READY"
  # A crash with the backlog: the next start recovers the queue.
  kill -9 -- "-$GW" 2>/dev/null; wait "$GW" 2>/dev/null || true
  while pgrep -g "$GW" >/dev/null; do sleep 0.05; done   # workers too
  GW=""
  start_gw "$BIN" "$D/postern.toml"
  printf '%-10s %8d %10s %10s %9s %9s %9s %9.2f\n' crashed "$N" - - "$(rss_mib "$GW")" \
    "$(store_mib "$D")" "$(log_mib "$D")" "$READY"
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
  printf '%-10s %8d %10.2f %10.0f %9s %9s %9s\n' drain "$N" "$t" "$DRAIN" "$peak" \
    "$(store_mib "$D")" "$(log_mib "$D")"
  sleep 3   # emptied space is given back after the next flush
  printf '%-10s %8d %10s %10s %9s %9s %9s   (%s)\n' settled 0 - - "$(rss_mib "$GW")" \
    "$(store_mib "$D")" "$(log_mib "$D")" "MiB: $(cd "$D/queue" && du -sm db bodies 2>/dev/null | tr '\t\n' '= ')"
  stop_gw
  if [ -n "${SKIP_LIVE:-}" ]; then   # SKIP_LIVE=1: backlog steps only
    kill "$SINK" 2>/dev/null || true; SINK=""
    continue
  fi
  # Live: a fresh queue, the hop up.
  rm -rf "$D/queue"
  start_gw "$BIN" "$D/postern.toml"
  t0=$(now)
  smtp-source -s 10 -m "$N" -l 4096 -f a@example.test -t b@remote.test "127.0.0.1:$SMTP"
  wait_delivered "$N"
  t=$(secs "$t0" "$(now)")
  LIVE=$(echo "$N / $t" | bc -l)
  printf '%-10s %8d %10.2f %10.0f %9s %9s %9s\n' live "$N" "$t" "$LIVE" "$(rss_mib "$GW")" \
    "$(store_mib "$D")" "$(log_mib "$D")"
  stop_gw
  kill "$SINK" 2>/dev/null || true; SINK=""
  printf 'drain/live = %.2f\n' "$(echo "$DRAIN / $LIVE" | bc -l)"
done
