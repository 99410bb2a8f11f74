#!/usr/bin/env python3
"""Holds N idle TCP connections to a running palr server from 127.0.0.2 and times a
retriever-mode `palr recommend` from 127.0.0.1 before and while they are open; prints the
server's RSS and open files. Usage: benchmarks/idle_connections.py PORT SERVER_PID N"""
import socket, subprocess, time, sys, os
port = int(sys.argv[1]); pid = int(sys.argv[2]); n = int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
def call():
    t = time.perf_counter()
    r = subprocess.run(["./target/release/palr", "recommend", "--addr", f"http://127.0.0.1:{port}",
                        "--history", "1,50,172", "--mode", "retriever", "--k", "5", "--json"],
                       capture_output=True)
    return time.perf_counter() - t, r.returncode
print("before: rss MiB", rss(), "call s/rc", call())
socks = []; t0 = time.perf_counter(); failed = 0
for i in range(n):
    s = socket.socket(); s.bind(("127.0.0.2", 0)); s.setblocking(False)
    try: s.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    except OSError: failed += 1; s.close(); continue
    socks.append(s)
print(f"opened {len(socks)} sockets from 127.0.0.2 in {time.perf_counter()-t0:.1f} s ({failed} failed)")
time.sleep(2)
print("with them: rss MiB", rss(), "call s/rc", [call() for _ in range(3)])
open_ = sum(1 for s in socks if s.fileno() >= 0)
print("open fds in server:", len(os.listdir(f"/proc/{pid}/fd")))
time.sleep(1)
for s in socks: s.close()
