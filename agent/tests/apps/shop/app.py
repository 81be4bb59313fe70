"""A small Flask shop served by gunicorn in the tests.

/sleep?s=N blocks the worker for N seconds (a stand-in for a slow synchronous call), so the
tests can fill every worker and watch the accept queue grow.
"""
import time

from flask import Flask, request

app = Flask(__name__)


@app.get("/")
def index():
    return "ok\n"


@app.get("/sleep")
def sleep():
    seconds = min(float(request.args.get("s", "1")), 30.0)
    time.sleep(seconds)
    return f"slept {seconds}\n"
