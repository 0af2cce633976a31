"""A fake Stripe API on 127.0.0.1 (a free port), enough for Checkout Sessions.

    with FakeStripe() as fake:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": fake.url})

POST /v1/checkout/sessions (form-encoded, as stripe-python sends it) honours the
Idempotency-Key header like Stripe: the same key returns the same session.
GET /v1/checkout/sessions/{id} returns it. `complete()` / `expire()` play the payer.
`sign_payload()` signs a webhook body exactly as Stripe does.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


def sign_payload(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header: t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<payload>">."""
    body = payload.encode() if isinstance(payload, str) else payload
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


FAKE_API_KEY = "sk_test_fake"
_event_seq = itertools.count(1)


def make_event(event_type: str, session: dict, event_id: str | None = None) -> bytes:
    """A webhook body as Stripe sends it for a Checkout Session event."""
    event = {
        "id": event_id or f"evt_test_{next(_event_seq)}_{secrets.token_hex(6)}",
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": session},
    }
    return json.dumps(event).encode()


def _nest(pairs: list[tuple[str, str]]) -> dict:
    """'line_items[0][price_data][unit_amount]=5000' pairs into nested dicts."""
    root: dict = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


class FakeStripe:
    def __init__(self) -> None:
        self.sessions: dict[str, dict] = {}
        self.by_idempotency_key: dict[str, str] = {}
        self.requests: list[dict] = []
        self.fail_next: int = 0  # answer this many calls with 500
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- playing the payer -------------------------------------------------------------

    def complete(self, session_id: str, *, paid: bool = True, email: str = "payer@example.com") -> dict:
        session = self.sessions[session_id]
        session.update(
            status="complete",
            payment_status="paid" if paid else "unpaid",
            payment_intent=f"pi_test_{secrets.token_hex(8)}",
            customer_details={"email": email},
        )
        return dict(session)

    def pay_async(self, session_id: str) -> dict:
        self.sessions[session_id]["payment_status"] = "paid"
        return dict(self.sessions[session_id])

    def expire(self, session_id: str) -> dict:
        self.sessions[session_id].update(status="expired", url=None)
        return dict(self.sessions[session_id])

    # --- the API -------------------------------------------------------------------------

    def _create_session(self, params: dict, idempotency_key: str | None) -> dict:
        with self._lock:
            if idempotency_key and idempotency_key in self.by_idempotency_key:
                return self.sessions[self.by_idempotency_key[idempotency_key]]
            item = params["line_items"]["0"]
            unit_amount = int(item["price_data"]["unit_amount"])
            session_id = f"cs_test_{secrets.token_hex(12)}"
            session = {
                "id": session_id,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "url": f"{self.url}/pay/{session_id}",
                "status": "open",
                "payment_status": "unpaid",
                "amount_total": unit_amount * int(item.get("quantity", 1)),
                "currency": item["price_data"]["currency"],
                "client_reference_id": params.get("client_reference_id"),
                "metadata": params.get("metadata", {}),
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "customer_email": params.get("customer_email"),
                "customer_details": None,
                "payment_intent": None,
                "livemode": False,
            }
            self.sessions[session_id] = session
            if idempotency_key:
                self.by_idempotency_key[idempotency_key] = session_id
            return session

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_{secrets.token_hex(6)}")
                self.end_headers()
                self.wfile.write(data)

            def _record(self, params: dict) -> bool:
                fake.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "params": params}
                )
                if fake.fail_next > 0:
                    fake.fail_next -= 1
                    self._reply(500, {"error": {"type": "api_error", "message": "fake outage"}})
                    return False
                if self.headers.get("Authorization", "") != f"Bearer {FAKE_API_KEY}":
                    self._reply(401, {"error": {"type": "invalid_request_error", "message": "bad key"}})
                    return False
                return True

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                params = _nest(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                if not self._record(params):
                    return
                if self.path != "/v1/checkout/sessions":
                    self._reply(404, {"error": {"type": "invalid_request_error", "message": "unknown path"}})
                    return
                self._reply(200, fake._create_session(params, self.headers.get("Idempotency-Key")))

            def do_GET(self) -> None:  # noqa: N802
                if not self._record({}):
                    return
                prefix = "/v1/checkout/sessions/"
                session = fake.sessions.get(self.path[len(prefix):].split("?")[0]) if self.path.startswith(prefix) else None
                if session is None:
                    self._reply(404, {"error": {"type": "invalid_request_error", "message": "No such session"}})
                    return
                self._reply(200, session)

        return Handler
