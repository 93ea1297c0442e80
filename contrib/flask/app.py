#!/usr/bin/env python3
"""Demo backend for wa-status-sidecar: the Flask kit in a small app, with a demo login.

    pip install ./contrib/flask
    INTERNAL_SHARED_SECRET=s3cret python contrib/flask/app.py --demo \\
        --db /tmp/wa-demo.db --port 8000 --seed business_1,business_2:42:en

It is a demo: anyone who reaches it can log in as any seeded business. So it starts only with the
explicit ``--demo`` flag and only on a loopback address, and it answers only requests whose
``Host`` is a loopback name (localhost, 127.x.y.z, [::1] or the ``--host`` name; 403 otherwise),
so a web page cannot reach it through DNS rebinding. It serves at most 64 connections at once
(one more is answered 503) and closes one that stays silent for 10 s, so local clients that open
connections and send nothing cannot pile up its threads. A real app calls
``wa_status_backend.init_app`` with its own login instead (see README.md).

``--seed`` takes ``tenant[:owner_id[:locale]]`` items: the gateway's tenant id is the business id
here, the n-th item's owner defaults to n, the locale (``he`` or ``en``) to ``he``; businesses
that exist are left as they are. The app prints ``listening on <port>`` once it accepts
connections (port 0 picks a free one). Routes:

    POST /api/internal/whatsapp/status-webhook   the sidecar's webhook (the kit)
    GET  /api/notifications                      the logged-in business's bell list (the kit; 401 without login)
    POST /demo/login   {"tenant_id": "business_1"}  log in as that business (404 if unknown)
    POST /demo/logout                            log out
    GET  /healthz                                {"ok": true}
    GET  /demo/state                             businesses, statuses, reminders (for tests)

Environment: ``INTERNAL_SHARED_SECRET`` (required), ``WEBHOOK_SIGNING_SECRET`` (optional,
whitespace-separated ``whsec_...`` Standard Webhooks secrets; then every call must be signed).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading

try:
    from wa_status_backend import (
        IdempotencyKey,
        Reminder,
        ReminderInfo,
        TenantStatus,
        create_tables,
        init_app,
        load_catalogue,
        parse_secrets,
        sqlite_begin_immediate,
    )
except ImportError as e:  # pragma: no cover - says how to fix a missing install
    sys.exit(f"error: the Flask kit is not installed ({e}): run `pip install ./contrib/flask` in this venv")

from flask import Flask, Response, request, session  # noqa: E402
from sqlalchemy import Integer, String, create_engine, event, func, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker  # noqa: E402
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402

EXIT_USAGE = 2
# Connections served at once. Werkzeug's threaded server gives every connection a thread for as
# long as it stays open, and by itself never closes a silent one: without a cap, anyone who can
# reach the port (any local process) holds a thread, its stack and a descriptor per connection, as
# many as it likes. One more than this is answered 503 and closed (the sidecar retries a webhook
# call). The sidecar's admin server uses the same number.
MAX_CONNECTIONS = 64
# A connection that sends nothing (no request, a stalled one, an idle keep-alive) for this long is
# closed, so a silent client gives its slot back. Longer than any pause of a real client between
# two reads; Node's HTTP agent drops its own idle keep-alive sockets after 5 s.
IDLE_TIMEOUT_S = 10


class DemoRequestHandler(WSGIRequestHandler):
    # socketserver sets this as the socket timeout: every read and write, the headers included.
    timeout = IDLE_TIMEOUT_S


class DemoServer(ThreadedWSGIServer):
    """Werkzeug's threaded server with at most ``max_connections`` connections (threads) at once."""

    def __init__(self, host: str, port: int, app, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(host, port, app, handler=DemoRequestHandler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                                b"Content-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class DemoBase(DeclarativeBase):
    pass


class DemoBusiness(DemoBase):
    """The demo's businesses: the gateway tenant id is the business id."""

    __tablename__ = "demo_businesses"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[int] = mapped_column(Integer)
    locale: Mapped[str] = mapped_column(String(16), default="he")


def parse_seed(spec: str, locales: list) -> list:
    """``tenant[:owner_id[:locale]]`` items -> [(tenant, owner_id, locale)]; raises ValueError."""
    out = []
    for n, item in enumerate((s.strip() for s in spec.split(",") if s.strip()), start=1):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) > 3:
            raise ValueError(f"--seed item {item!r}: use tenant[:owner_id[:locale]]")
        tenant = parts[0]
        if not tenant:
            raise ValueError(f"empty tenant id in --seed item {item!r}")
        owner = parts[1] if len(parts) > 1 else str(n)
        if not owner.isascii() or not owner.isdigit() or len(owner) > 18:
            raise ValueError(f"--seed item {item!r}: the owner id must be a number")
        locale = parts[2] if len(parts) > 2 else "he"
        if locale not in locales:
            raise ValueError(f"--seed item {item!r}: locale {locale!r} is not one of {', '.join(locales)}")
        out.append((tenant, int(owner), locale))
    return out


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


_PORT = re.compile(r"[0-9]{1,5}")


def is_loopback_host_header(value: str, names=()) -> bool:
    """True when a request's ``Host`` names loopback literally: ``localhost``, a 127.x.y.z address,
    ``[::1]`` or one of ``names`` (the bind host), with or without a port.

    No DNS lookup, on purpose: in a DNS rebinding attack the attacker's name *does* resolve to
    127.0.0.1, and the browser then sends that name as the Host."""
    if value.startswith("["):  # an IPv6 address, bracketed
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return False
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    host, sep, port = value.partition(":")
    if sep and not _PORT.fullmatch(port):
        return False  # "localhost:80@evil.example", a bare IPv6 address, an empty port
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]  # "localhost." is the same name
    if host == "localhost" or host in names:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _iso(value):
    return None if value is None else value.isoformat() + "Z"


def create_app(db_path: str, secret: str, signing_secrets: str = "", bind_host: str = "127.0.0.1") -> Flask:
    engine = sqlite_begin_immediate(create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30}))

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection, _record):
        # Outside any transaction (a journal mode cannot change inside one); readers then never
        # wait for the writer.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
    DemoBase.metadata.create_all(engine)
    create_tables(engine)
    db = scoped_session(sessionmaker(engine))

    app = Flask("wa_status_demo")
    app.config.update(
        SECRET_KEY=os.urandom(32),  # a restart logs everyone out; no cookie outlives the process
        SESSION_COOKIE_NAME="wa_demo_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        INTERNAL_SHARED_SECRET=secret,
        WEBHOOK_SIGNING_SECRET=signing_secrets,
    )
    app.teardown_appcontext(lambda exc: db.remove())

    def find_business(tenant_id):
        b = db.get(DemoBusiness, tenant_id)
        return (b.tenant_id, b.owner_id) if b else None

    def business_locale(business_id):
        b = db.get(DemoBusiness, business_id)
        return b.locale if b else None

    init_app(
        app,
        session=db,
        find_business=find_business,
        current_business=lambda: session.get("business_id"),
        locale=business_locale,
    )
    app.extensions["wa_status_demo_db"] = db

    def reply(body, status=200):
        return Response(json.dumps(body, ensure_ascii=False), status=status,
                        content_type="application/json; charset=utf-8")

    # The bind host was checked to be loopback by main(); a name such as ip6-localhost is then
    # fine as a Host too (it resolves through the machine's own hosts file).
    host_names = tuple({bind_host.strip("[]").lower().rstrip(".")} - {""})

    @app.before_request
    def loopback_host_only():
        # Binding loopback keeps other machines out, not a web page in the user's own browser:
        # with DNS rebinding, evil.example resolves to 127.0.0.1 and its scripts could read
        # /demo/state and log in. Such requests still say Host: evil.example, so they stop here.
        # A browser always sends a Host; a local HTTP/1.0 client without one is let through.
        if "HTTP_HOST" not in request.environ or is_loopback_host_header(request.host, host_names):
            return None
        logging.getLogger("wa_status_demo").warning(
            "refused a request for Host %r from %s: the demo answers loopback names only",
            request.host[:100], request.remote_addr)
        return reply({"ok": False, "error": "untrusted_host",
                      "message": "the open demo answers only requests addressed to localhost, 127.0.0.1 or "
                                 "[::1] (with any port): open it as http://127.0.0.1:<port>/"}, 403)

    @app.get("/healthz")
    def healthz():
        return reply({"ok": True})

    @app.post("/demo/login")
    def demo_login():
        data = request.get_json(silent=True)  # JSON only: a cross-site form cannot log anyone in
        tenant = data.get("tenant_id") if isinstance(data, dict) else None
        if not isinstance(tenant, str) or not tenant:
            return reply({"ok": False, "error": "invalid_payload",
                          "message": 'send {"tenant_id": "<business>"} as application/json'}, 400)
        if db.get(DemoBusiness, tenant) is None:
            return reply({"ok": False, "error": "unknown_business"}, 404)
        session.clear()
        session["business_id"] = tenant
        return reply({"ok": True, "tenant_id": tenant})

    @app.post("/demo/logout")
    def demo_logout():
        session.clear()
        return reply({"ok": True})

    @app.get("/demo/state")
    def demo_state():
        infos = {i.reminder_id: i for i in db.scalars(select(ReminderInfo))}
        reminders = []
        for r in db.scalars(select(Reminder).order_by(Reminder.id)):
            info = infos.get(str(r.id))
            reminders.append({
                "id": r.id, "tenant_id": r.tenant_id, "lead_id": r.lead_id, "title": r.title, "note": r.note,
                "due_date": _iso(r.due_date), "priority": r.priority, "type": r.type, "created_by": r.created_by,
                "status": "completed" if r.is_completed else "open", "completed_at": _iso(r.completed_at),
                "created_at": _iso(r.created_at), "lang": info.lang if info else None,
                "reason": info.reason if info else None,
                "idempotency_key": info.idempotency_key if info else None,
                "status_changed_at": _iso(info.status_changed_at) if info else None,
            })
        return reply({
            "businesses": [{"tenant_id": b.tenant_id, "owner_id": b.owner_id, "locale": b.locale}
                           for b in db.scalars(select(DemoBusiness).order_by(DemoBusiness.tenant_id))],
            "statuses": [{"tenant_id": s.tenant_id, "status": s.status, "reason": s.reason,
                          "changed_at": _iso(s.changed_at), "received_at": _iso(s.received_at)}
                         for s in db.scalars(select(TenantStatus).order_by(TenantStatus.tenant_id))
                         if s.status is not None],
            "reminders": reminders,
            "idempotency_keys": db.scalar(select(func.count()).select_from(IdempotencyKey)),
        })

    return app


def seed(app: Flask, items: list) -> None:
    db = app.extensions["wa_status_demo_db"]
    with app.app_context():
        for tenant, owner, locale in items:
            if db.get(DemoBusiness, tenant) is None:
                db.add(DemoBusiness(tenant_id=tenant, owner_id=owner, locale=locale))
        db.commit()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Demo backend for wa-status-sidecar (the Flask kit with a demo login).")
    ap.add_argument("--demo", action="store_true",
                    help="required: run the open demo (anyone who reaches it can log in as any business); loopback only")
    ap.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    ap.add_argument("--host", default="127.0.0.1", help="bind address, a loopback one (default 127.0.0.1)")
    ap.add_argument("--seed", default="", help="comma-separated tenant[:owner_id[:locale]] items")
    ap.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = ap.parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE

    if not args.demo:
        return fail("app.py is the open demo backend (its demo login lets anyone act as any business): "
                    "start it with --demo, on a loopback address; a real app uses "
                    "wa_status_backend.init_app with its own login (contrib/flask/README.md)")
    if not is_loopback(args.host):
        return fail(f"--demo refuses to bind {args.host!r}: the demo login is open, so it binds loopback only "
                    "(127.0.0.1, ::1 or localhost)")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    secret = os.environ.get("INTERNAL_SHARED_SECRET", "")
    if not secret:
        return fail("set INTERNAL_SHARED_SECRET (the secret the sidecar sends in X-INTERNAL-SECRET)")
    signing = os.environ.get("WEBHOOK_SIGNING_SECRET", "")
    try:
        parse_secrets(signing)
    except ValueError as e:
        return fail(f"WEBHOOK_SIGNING_SECRET: {e}")
    try:
        items = parse_seed(args.seed, sorted(load_catalogue()))
    except ValueError as e:
        return fail(str(e))

    app = create_app(args.db, secret, signing, bind_host=args.host)
    seed(app, items)
    server = DemoServer(args.host, args.port, app)

    def stop(signum, frame):
        # shutdown() blocks until serve_forever returns: call it off the main thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("wa_status_demo").warning(
        "demo mode: open demo login on %s:%d (loopback only); signed webhooks %s",
        args.host, server.server_port, "required" if signing.split() else "off")
    print(f"listening on {server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
