#!/usr/bin/env bash
# Windows smoke test under Wine (Linux host), run by hand:
#   deploy/windows/wine-smoke.sh
# Builds postern.exe for x86_64-pc-windows-gnu, then as a Windows service:
# install (recovery actions), start through the Service Control Manager,
# relay one message (swaks → postern.exe → smtp-sink), stop through the SCM
# (drain, flush), uninstall. Needs Debian packages wine64, gcc-mingw-w64-x86-64,
# swaks and postfix (smtp-sink), and the rustup target x86_64-pc-windows-gnu.
# Wine 8 lacks bcryptprimitives!ProcessPrng, which Rust's std imports: a
# stand-in over RtlGenRandom is built beside the .exe (stand-in.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/postern-wine.XXXXXX)
export WINEDEBUG=-all WINEPREFIX="$WORK/prefix"
WINE=$(command -v wine64 || echo /usr/lib/wine/wine64)
SMTP=3525 ADMIN=3825 SINK=3526
cleanup() {
  "$WINE" sc stop postern >/dev/null 2>&1 || true
  "$WINE" "$WORK/postern.exe" service uninstall >/dev/null 2>&1 || true
  wineserver -k 2>/dev/null || /usr/lib/wine/wineserver -k 2>/dev/null || true
  [ -n "${SINK_PID:-}" ] && kill "$SINK_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --target x86_64-pc-windows-gnu --bin postern)
cp "$ROOT/target/x86_64-pc-windows-gnu/debug/postern.exe" "$WORK/"
"$ROOT/deploy/windows/stand-in.sh" "$WORK"

cat > "$WORK/postern.toml" <<CONF
[server]
hostname = "win.example.test"
listen = ["127.0.0.1:$SMTP"]
[queue]
path = "queue"
[admin]
listen = "127.0.0.1:$ADMIN"
[[route]]
domain = "*"
hosts = ["127.0.0.1:$SINK"]
CONF
smtp-sink -c -u nobody "127.0.0.1:$SINK" 64 > "$WORK/sink.log" 2>&1 &
SINK_PID=$!

cd "$WORK"
"$WINE" ./postern.exe check-config --config postern.toml
"$WINE" ./postern.exe service install --config postern.toml
"$WINE" sc start postern
for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$SMTP") 2>/dev/null && break; sleep 0.2; done
swaks --server "127.0.0.1:$SMTP" --from a@example.test --to b@example.test --silent 2 \
  || { echo "FAIL: message not accepted"; cat "$WORK/queue/postern.log"; exit 1; }
for _ in $(seq 1 100); do
  curl -s "127.0.0.1:$ADMIN/metrics" | grep -q '^postern_recipients_delivered_total{class="internet"} 1' && break
  sleep 0.2
done
curl -s "127.0.0.1:$ADMIN/metrics" | grep -q '^postern_recipients_delivered_total{class="internet"} 1' \
  || { echo "FAIL: not delivered"; cat "$WORK/queue/postern.log"; exit 1; }
"$WINE" sc stop postern
for _ in $(seq 1 150); do grep -q "queue flushed; bye" "$WORK/queue/postern.log" && break; sleep 0.2; done
grep -q "queue flushed; bye" "$WORK/queue/postern.log" || { echo "FAIL: no clean stop"; exit 1; }
"$WINE" ./postern.exe service uninstall
echo "PASS: Windows service installed, started by the SCM, relayed a message, stopped cleanly"
