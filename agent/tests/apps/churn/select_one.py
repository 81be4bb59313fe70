"""Runs `SELECT 1` N times on one PostgreSQL connection: one write and one read per query.

usage: select_one.py DSN N
"""
import sys

import psycopg

dsn, n = sys.argv[1], int(sys.argv[2])
with psycopg.connect(dsn, autocommit=True) as conn:
    for _ in range(n):
        conn.execute("SELECT 1").fetchone()
