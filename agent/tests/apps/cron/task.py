"""One periodic job run: connects through PgBouncer, runs its own batch — statements that each
hold a server connection for a while — and exits. Each job does different work, as real jobs
do; what they share is the schedule."""
import os
import sys

import psycopg

JOBS = {
    "nightly_rollup": [
        ("SELECT status, count(*), sum(amount) FROM payments GROUP BY status", ()),
        ("SELECT pg_sleep(0.5)", ()),
    ],
    "invoice_sync": [
        ("SELECT count(*) FROM payments WHERE amount > %s", (500,)),
        ("SELECT pg_sleep_for('600 milliseconds')", ()),
    ],
    "search_reindex": [
        ("SELECT max(id), min(id) FROM payments WHERE status = %s", ("paid",)),
        ("SELECT pg_sleep_until(clock_timestamp() + interval '700 milliseconds')", ()),
    ],
    "metrics_export": [
        ("SELECT avg(amount) FROM payments", ()),
        ("SELECT count(*) FROM generate_series(1, 2000000)", ()),
    ],
}

name = sys.argv[1]
with psycopg.connect(os.environ["PG_DSN"], autocommit=True, prepare_threshold=None) as conn:
    for _ in range(3):
        for sql, params in JOBS[name]:
            conn.execute(sql, params).fetchone()
