"""A tiny cron for the cron-alignment replay (shared/incidents/cron-alignment-pgbouncer.txt).

Reads a schedule file of lines `name offset_seconds` and, every PERIOD seconds, starts
`python task.py <name>` as a new process at each task's offset into the period — as cron
starts a new process per run. The schedule file is re-read every second, so the test can
restagger the tasks while it runs.
"""
import os
import subprocess
import sys
import time

schedule_file, period = sys.argv[1], float(sys.argv[2])
here = os.path.dirname(os.path.abspath(__file__))
fired = {}
while True:
    now = time.time()
    try:
        lines = open(schedule_file).read().split("\n")
    except OSError:
        lines = []
    for line in lines:
        if not line.strip():
            continue
        name, offset = line.split()
        # The start of the current period's slot for this task.
        slot = (now - float(offset)) // period
        if now - (slot * period + float(offset)) < 1.0 and fired.get(name) != slot:
            fired[name] = slot
            subprocess.Popen([sys.executable, os.path.join(here, "task.py"), name])
    time.sleep(0.1)
