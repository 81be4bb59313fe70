"""Starts `n` short-lived processes (/bin/true through posix_spawn, four at a time) and
`threads` short-lived threads: the churn a busy host has.

usage: spawn.py <n> <threads>
"""
import os
import sys
import threading

n, threads = int(sys.argv[1]), int(sys.argv[2])
PARALLEL = 4


def spawner(count):
    for _ in range(count):
        pid = os.posix_spawn("/bin/true", ["true"], {})
        os.waitpid(pid, 0)


spawners = [threading.Thread(target=spawner, args=(n // PARALLEL + (i < n % PARALLEL),))
            for i in range(PARALLEL)]
for t in spawners:
    t.start()
for t in spawners:
    t.join()
for _ in range(threads):
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
