"""Opens `n_ping` + `n_db` TCP connections to 127.0.0.1:<port>, one request each
(`Connection: close`), from `threads` threads; exits non-zero if any request failed.

usage: client.py <port> <n_ping> <n_db> <threads>
"""
import socket
import sys
import threading

port, n_ping, n_db, threads = (int(a) for a in sys.argv[1:5])
failures = []


def request(path):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    if not reply.startswith(b"HTTP/1.1 200") and not reply.startswith(b"HTTP/1.0 200"):
        failures.append(reply[:80])


def worker(index):
    paths = ["/db"] * n_db + ["/ping"] * n_ping
    for path in paths[index::threads]:
        request(path)


pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join()
if failures:
    print(f"{len(failures)} failed, first: {failures[0]!r}", file=sys.stderr)
    sys.exit(1)
