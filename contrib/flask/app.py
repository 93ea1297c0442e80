#!/usr/bin/env python3
"""Demo / end-to-end backend for wa-status-sidecar.

    INTERNAL_SHARED_SECRET=s3cret python contrib/flask/app.py \
        --db /tmp/wa-demo.db --port 8000 --seed business_1,business_2

Creates the SQLite database, seeds the businesses (``tenant`` or ``tenant:owner_id``;
without an owner id the n-th tenant gets owner n; existing tenants are left alone),
binds 127.0.0.1 and prints ``listening on <port>`` once it accepts connections (port 0
picks a free port and prints it). Routes:

    POST /api/internal/whatsapp/status-webhook   the sidecar's webhook
    GET  /api/notifications[?owner_id=N]         open reminders (demo: no login)
    GET  /healthz                                {"ok": true}
    GET  /demo/state                             businesses, last statuses, all reminders
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flask import Flask, jsonify  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from wa_status_backend import SqliteStore, create_blueprint  # noqa: E402


def parse_seed(spec: str) -> list:
    out = []
    for n, item in enumerate((s.strip() for s in spec.split(",")), start=1):
        if not item:
            continue
        tenant, sep, owner = item.partition(":")
        tenant = tenant.strip()
        owner = owner.strip()
        if not tenant:
            raise ValueError(f"empty tenant id in --seed item {item!r}")
        if sep and not owner:
            raise ValueError(f"empty owner id in --seed item {item!r}")
        owner_id = (int(owner) if owner.lstrip("-").isdigit() else owner) if sep else n
        out.append((tenant, owner_id))
    return out


def create_app(store: SqliteStore, secret: str) -> Flask:
    app = Flask("wa_status_demo")
    app.register_blueprint(create_blueprint(store=store, secret=secret))

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    @app.get("/demo/state")
    def demo_state():
        return jsonify({
            "businesses": store.businesses(),
            "statuses": store.statuses(),
            "reminders": store.reminders(),
            "idempotency_keys": store.idempotency_key_count(),
        })

    return app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ap.add_argument("--seed", default="", help="comma-separated tenant ids, each optionally tenant:owner_id")
    ap.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = ap.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    secret = os.environ.get("INTERNAL_SHARED_SECRET", "")
    if not secret:
        print("error: set INTERNAL_SHARED_SECRET", file=sys.stderr)
        return 2
    try:
        seed = parse_seed(args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    store = SqliteStore(args.db)
    for tenant, owner in seed:
        store.add_business(tenant, owner)

    app = create_app(store, secret)
    server = make_server(args.host, args.port, app, threaded=True)

    def stop(signum, frame):
        # shutdown() blocks until serve_forever returns: call it off the main thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    print(f"listening on {server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
