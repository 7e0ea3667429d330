#!/usr/bin/env bash
# Queue hand-over rate (issue 16): a gateway A holding MESSAGES × 4 KB
# (the next hop down), drained and its queue transferred to a peer B over
# SMTP on loopback; then B's delivery of them when the hop comes up.
#
#   benches/transfer.sh [MESSAGES] [CONCURRENCY]   (default 5000, 8)
#
# Prints the fill rate, the transfer's time and rate (messages per second
# A -> B, each removed from A durably after B's 250), and B's drain rate.
# Fails if a message is missing at the sink or left on A. Needs smtp-source
# and smtp-sink (Debian postfix), curl, bc; a release build.
set -euo pipefail
N=${1:-5000}
CONC=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(cd "$ROOT" && cargo build --release -q)
BIN="$ROOT/target/release/postern"
WORK=$(mktemp -d /tmp/postern-transfer.XXXXXX)
A_SMTP=22025 A_ADMIN=22026 B_SMTP=22027 B_ADMIN=22028 HOP=22029
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && { kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; }
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
metric() { # admin-port metric
  curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}' | head -1
}
config() { # dir smtp admin retry
  mkdir -p "$1"
  cat > "$1/postern.toml" <<CFG
[server]
hostname = "$(basename "$1").example.test"
listen = ["127.0.0.1:$2"]
[relay]
trusted_networks = ["127.0.0.1/32"]
[queue]
path = "$1/queue"
retry_intervals = ["$4"]
max_messages = 100000000
[admin]
listen = "127.0.0.1:$3"
[delivery]
starttls = false
[fleet]
peers = ["127.0.0.1/32"]
transfer_concurrency = $CONC
[[route]]
domain = "*"
hosts = ["127.0.0.1:$HOP"]
CFG
}
start() { # dir admin
  setsid "$BIN" run --config "$1/postern.toml" 2>>"$1/log" >/dev/null &
  PIDS+=($!)
  disown
  until curl -sf "127.0.0.1:$2/readyz" >/dev/null 2>&1; do sleep 0.05; done
}
for port in $A_SMTP $A_ADMIN $B_SMTP $B_ADMIN $HOP; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (a run still going?)" >&2; exit 1
  fi
done
config "$WORK/a" $A_SMTP $A_ADMIN 10m
config "$WORK/b" $B_SMTP $B_ADMIN 10m
start "$WORK/a" $A_ADMIN
start "$WORK/b" $B_ADMIN
t0=$(now)
smtp-source -c -l 4096 -m "$N" -s 10 -f s@example.test -t r@inside.test "127.0.0.1:$A_SMTP" >/dev/null
fill=$(secs "$t0" "$(now)")
# Every message has had its first (failed) attempt: all deferred.
until [ "$(curl -s "127.0.0.1:$A_ADMIN/drain" | grep -o '"delivering":[0-9]*' | cut -d: -f2)" = 0 ] \
  && [ "$(curl -s "127.0.0.1:$A_ADMIN/drain" | grep -o '"waiting":[0-9]*' | cut -d: -f2)" = "$N" ]; do
  sleep 0.2
done
"$BIN" drain --config "$WORK/a/postern.toml" >/dev/null
t0=$(now)
"$BIN" queue --config "$WORK/a/postern.toml" transfer --to "127.0.0.1:$B_SMTP" | tail -1
xfer=$(secs "$t0" "$(now)")
left=$(curl -s "127.0.0.1:$A_ADMIN/drain")
got=$(metric $B_ADMIN postern_transfers_received_total)
smtp-sink -c -u nobody "127.0.0.1:$HOP" 256 > "$WORK/sink.out" 2>&1 &
PIDS+=($!)
disown
sleep 0.3
t0=$(now)
"$BIN" queue --config "$WORK/b/postern.toml" retry --all >/dev/null
until [ "$(tr '\r' '\n' < "$WORK/sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)" = "$N" ]; do
  [ "$(echo "$(secs "$t0" "$(now)") < 600" | bc)" = 1 ] || { echo "FAIL: not all delivered" >&2; exit 1; }
  sleep 0.1
done
drain=$(secs "$t0" "$(now)")
printf 'messages=%s (4 KB) concurrency=%s\n' "$N" "$CONC"
printf 'fill A (hop down)        %8.0f msg/s\n' "$(echo "$N / $fill" | bc -l)"
printf 'transfer A -> B          %8.0f msg/s  (%.2f s; B took over %s)\n' "$(echo "$N / $xfer" | bc -l)" "$xfer" "$got"
printf 'B delivers (hop up)      %8.0f msg/s\n' "$(echo "$N / $drain" | bc -l)"
printf 'left on A: %s\n' "$left"
[ "$got" = "$N" ] && echo "$left" | grep -q '"waiting":0' || { echo "FAIL: transfer incomplete" >&2; exit 1; }
