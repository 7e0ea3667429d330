#!/usr/bin/env bash
# The cost of isolation on Windows, measured under Wine: relay with the
# supervisor, gateway and 2 content workers, against `run --no-supervisor`
# with `workers.processes = 0`, alternating, ROUNDS times.
#   cargo build --release --target x86_64-pc-windows-gnu --bin postern
#   benches/wine_isolation.sh [N messages, default 2000]
# Needs wine64, smtp-source/smtp-sink (Debian postfix), bc, the mingw
# compiler (for the ProcessPrng stand-in). Prints messages/s accepted.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-2000} ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d /tmp/postern-winbench.XXXXXX)
export WINEPREFIX="$WORK/prefix" WINEDEBUG=-all
W=/usr/lib/wine/wine64
cp "$ROOT/target/x86_64-pc-windows-gnu/release/postern.exe" "$WORK/"
"$ROOT/deploy/windows/stand-in.sh" "$WORK"
cd "$WORK"
"$W" cmd /c exit >/dev/null 2>&1
smtp-sink -u nobody 127.0.0.1:3526 256 >/dev/null 2>&1 &
SINK=$!
trap 'kill $SINK 2>/dev/null; /usr/lib/wine/wineserver -k 2>/dev/null; rm -rf "$WORK"' EXIT
run_one() { # label, extra args, worker processes, port
  local label=$1 args=$2 procs=$3 port=$4
  rm -rf "q$port" "log$port"
  cat > "c$port.toml" <<EOF
[server]
hostname = "win.example.test"
listen = ["127.0.0.1:$port"]
[queue]
path = "q$port"
[admin]
listen = "127.0.0.1:$((port + 1000))"
[workers]
processes = $procs
[tracking]
destination = "off"
[[route]]
domain = "*"
hosts = ["127.0.0.1:3526"]
EOF
  # Its own process group: the gateway and workers Wine starts stay in it.
  # shellcheck disable=SC2086
  setsid "$W" ./postern.exe run $args --config "c$port.toml" 2>"log$port" >/dev/null &
  local pid=$!
  for _ in $(seq 1 300); do grep -q "postern ready" "log$port" 2>/dev/null && break; sleep 0.2; done
  local t0 t1
  t0=$(date +%s.%N)
  smtp-source -s 10 -m "$N" -l 4096 -f a@example.test -t b@example.test "127.0.0.1:$port"
  t1=$(date +%s.%N)
  printf '%-32s %d messages in %.2f s = %.0f msg/s\n' "$label" "$N" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$N / ($t1 - $t0)" | bc -l)"
  kill -9 -- "-$pid" 2>/dev/null || true
  sleep 2
}
for _ in $(seq 1 "$ROUNDS"); do
  run_one "isolated (supervisor, 2 workers)" "" 2 4525
  run_one "in-process (no supervisor, 0)" "--no-supervisor" 0 4625
done
