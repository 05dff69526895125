"""The bare Flask baseline for ``bench/bench.py``: echo the request body, do nothing else.

Served by gunicorn with the same settings as ``cds-service serve``, it measures what Flask,
gunicorn's sync workers and the loopback network cost on their own, so the service's throughput
can be read as a fraction of that ceiling.
"""

from __future__ import annotations

from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/cds-services/<service_id>")
def echo(service_id: str) -> Response:
    """Return the request body unchanged, as JSON."""
    return Response(request.get_data(), mimetype="application/json")
