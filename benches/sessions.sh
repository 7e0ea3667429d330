#!/usr/bin/env bash
# Memory per open session: the gateway's tree RSS with N idle SMTP sessions
# (each has read its 220 greeting), for N in the list, printed as a table.
#
#   benches/sessions.sh [N ...]        (default 1000 5000 10000)
#
# The sessions come from one Python process on loopback (a trusted client, so
# no greeting delay); the gateway's max_connections is raised to fit and the
# file limit to its hard maximum. Needs python3.
set -euo pipefail
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 5000 10000)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/postern}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q)
WORK=$(mktemp -d /tmp/postern-sessions.XXXXXX)
SMTP=${SMTP_PORT:-23025} ADMIN=${ADMIN_PORT:-23026}
GW=""
cleanup() { [ -n "$GW" ] && { kill -9 -- "-$GW"; wait "$GW"; } 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"   # as many sockets as we may
cat > "$WORK/postern.toml" <<EOF
[server]
hostname = "bench.example.test"
listen = ["127.0.0.1:$SMTP"]
max_connections = 60000
[queue]
path = "$WORK/queue"
[admin]
listen = "127.0.0.1:$ADMIN"
EOF
setsid "$BIN" run --config "$WORK/postern.toml" 2>"$WORK/log" >/dev/null &
GW=$!
until curl -sf "127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1; do
  kill -0 "$GW" 2>/dev/null || { tail -5 "$WORK/log" >&2; exit 1; }
  sleep 0.05
done
sleep 0.5
python3 - "$GW" "$SMTP" "${COUNTS[@]}" <<'PY'
import os, socket, sys, time

pgid, port, counts = int(sys.argv[1]), int(sys.argv[2]), [int(c) for c in sys.argv[3:]]

def tree_rss_kib():
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5: process group
                continue
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total

print(f"{'sessions':>9} {'tree_RSS_MiB':>13} {'KiB/session':>12}")
for n in counts:
    base = tree_rss_kib()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    for s in socks:
        greeting = s.recv(512)
        if not greeting.startswith(b"220"):
            sys.exit(f"no greeting: {greeting!r}")
    time.sleep(0.5)
    rss = tree_rss_kib()
    print(f"{n:>9} {rss / 1024:>13.1f} {(rss - base) / n:>12.1f}")
    for s in socks:
        s.close()
    time.sleep(1.0)
PY
