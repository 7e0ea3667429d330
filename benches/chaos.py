#!/usr/bin/env python3
"""Power-cut chaos: kill the whole gateway process tree with SIGKILL at
random moments under load, restart it, and count what happened to every
message that got a 250.

    benches/chaos.py [MESSAGES] [KILLS] [BINARY]

defaults: 10000 messages, 20 kills, target/release/postern (built with
`cargo build --release`). Loopback only: a sink on 127.0.0.1 (a small
SMTP server in this script, recording each Message-ID it receives), the
gateway relaying everything to it, eight client threads sending one
message per connection and, like real clients, sending a message again
after any failure (refused connection, 4xx, no reply) until it gets 250.

Kills are spread at random over the load; after each, the gateway is
started again at once (the supervisor is killed with it: SIGKILL to the
process group, as a power cut or the OOM killer would). At the end:

    kills, sent (250), delivered, lost (250 but never delivered), duplicates

Exit status 1 when anything acknowledged was lost (the goal is 0);
duplicates are counted and reported, not failed (at-least-once: a message
whose 250 was lost with the connection is sent again by its client).
"""

import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
KILLS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
BIN = sys.argv[3] if len(sys.argv) > 3 else "target/release/postern"
THREADS = 8
MID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.I | re.M)


class Sink:
    """A minimal SMTP server: counts each Message-ID it receives."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = {}
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            c, _ = self.sock.accept()
            threading.Thread(target=self.session, args=(c,), daemon=True).start()

    def session(self, c):
        f = c.makefile("rb")
        c.sendall(b"220 sink ESMTP\r\n")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line[:4].upper()
                if cmd in (b"EHLO", b"HELO"):
                    c.sendall(b"250-sink\r\n250 8BITMIME\r\n")
                elif cmd == b"DATA":
                    c.sendall(b"354 go\r\n")
                    data = []
                    while True:
                        l = f.readline()
                        if not l or l == b".\r\n":
                            break
                        data.append(l)
                    m = MID.search(b"".join(data))
                    if m:
                        with self.lock:
                            k = m.group(1).decode()
                            self.seen[k] = self.seen.get(k, 0) + 1
                    c.sendall(b"250 ok\r\n")
                elif cmd == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"250 ok\r\n")
        except OSError:
            return
        finally:
            c.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Gateway:
    def __init__(self, binary, workdir, sink_port):
        self.binary = os.path.abspath(binary)
        self.dir = workdir
        self.port = free_port()
        self.admin = free_port()
        self.config = os.path.join(workdir, "postern.toml")
        with open(self.config, "w") as f:
            f.write(f"""
[server]
hostname = "gw.chaos.test"
listen = ["127.0.0.1:{self.port}"]
[queue]
path = "{workdir}/queue"
retry_intervals = ["1s"]
min_free_disk = "0"
max_messages = 0
[admin]
listen = "127.0.0.1:{self.admin}"
[relay]
accepted_domains = ["inside.test"]
[tracking]
destination = "off"
[[route]]
domain = "*"
hosts = ["127.0.0.1:{sink_port}"]
""")
        self.proc = None
        self.log = open(os.path.join(workdir, "postern.log"), "ab")

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "run", "--config", self.config],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            start_new_session=True)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        # The gateway child dies with the group a moment later; until then
        # it holds the listening port (as after a power cut, the service
        # manager starts us once the old processes are gone).
        for _ in range(200):
            try:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release (or name the binary)")
    work = tempfile.mkdtemp(prefix="postern-chaos-")
    sink = Sink()
    gw = Gateway(BIN, work, sink.port)
    gw.start()
    acked = set()
    refused = []
    resent = [0]
    lock = threading.Lock()
    next_i = [0]
    body = ("x" * 76 + "\r\n") * 26

    def client():
        while True:
            with lock:
                i = next_i[0]
                if i >= N:
                    return
                next_i[0] += 1
            mid = f"chaos-{i}@chaos.test"
            msg = (f"From: s@chaos.test\r\nTo: r@inside.test\r\nSubject: {i}\r\n"
                   f"Message-ID: <{mid}>\r\n\r\n{body}\r\n")
            for attempt in range(2000):
                try:
                    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as s:
                        s.sendmail("s@chaos.test", ["r@inside.test"], msg)
                    with lock:
                        acked.add(mid)
                    break
                except smtplib.SMTPResponseException as e:
                    if e.smtp_code >= 500:
                        with lock:
                            refused.append((mid, e.smtp_code, e.smtp_error))
                        break
                    with lock:
                        resent[0] += 1
                    time.sleep(0.1)
                except smtplib.SMTPRecipientsRefused as e:
                    with lock:
                        refused.append((mid, str(e.recipients)))
                    break
                except (OSError, smtplib.SMTPException):
                    with lock:
                        resent[0] += 1
                    time.sleep(0.1)

    threads = [threading.Thread(target=client) for _ in range(THREADS)]
    t0 = time.time()
    for t in threads:
        t.start()
    # Kills at random moments of the load: when the count of acknowledged
    # messages crosses each of KILLS random marks (plus a random delay of
    # up to 50 ms, so a kill lands anywhere in a transaction's life).
    marks = sorted(random.sample(range(1, max(N - N // 10, KILLS + 1)), KILLS))
    kills = 0
    for mark in marks:
        while any(t.is_alive() for t in threads):
            with lock:
                if len(acked) >= mark:
                    break
            time.sleep(0.005)
        if not any(t.is_alive() for t in threads):
            break
        time.sleep(random.uniform(0, 0.05))
        gw.kill()
        kills += 1
        gw.start()
        print(f"kill {kills}: {len(acked)} acknowledged so far", flush=True)
    for t in threads:
        t.join()
    load = time.time() - t0
    deadline = time.time() + 600
    while time.time() < deadline:
        with sink.lock:
            missing = [m for m in acked if m not in sink.seen]
        if not missing:
            break
        time.sleep(0.5)
    with sink.lock:
        delivered = len(sink.seen)
        dups = sum(n - 1 for n in sink.seen.values())
        lost = sorted(m for m in acked if m not in sink.seen)
    gw.kill()
    print(f"messages {N}, kills {kills}, load {load:.0f} s, client resends {resent[0]}")
    print(f"acknowledged {len(acked)}, delivered {delivered}, lost {len(lost)}, "
          f"duplicates {dups}")
    lost_dir = os.path.join(work, "queue", "lost")
    saved = len(os.listdir(lost_dir)) if os.path.isdir(lost_dir) else 0
    print(f"bodies saved without a record (never acknowledged): {saved}")
    if refused:
        print(f"refused permanently: {len(refused)}, e.g. {refused[0]}")
        sys.exit(1)
    if lost:
        print("lost:", " ".join(lost[:20]))
        print(f"kept for inspection: {work}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
