"""A webhook receiver for the tests: an HTTP server on 127.0.0.1 that keeps every request and
answers with the status codes it is given, in turn (the last one from then on), or hangs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks

from app.webhooks.events import EVENT_TYPES


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=lambda: [200])
    hang_s: float = 0.0
    location: str | None = None  # sent as the Location header (for redirects)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.hang_s:
                    threading.Event().wait(receiver.hang_s)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("content-length", "0")
                if receiver.location:
                    self.send_header("location", receiver.location)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tunelab"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verified(self, secret: str) -> list[dict]:
        """Every received event, its signature checked by the `standardwebhooks` package (which
        raises on a bad signature or a stale timestamp)."""
        webhook = standardwebhooks.Webhook(secret)
        return [webhook.verify(r.body, r.headers) for r in self.received]


def create_webhook(account, url: str, event_types: list[str] | None = None) -> dict:
    """A webhook of the account's team for every event (or `event_types`): its row and its secret."""
    response = account.client.post(
        f"/api/teams/{account.team_id}/webhooks",
        json={"url": url, "event_types": event_types or list(EVENT_TYPES), "description": "CI notifier"},
    )
    assert response.status_code == 201, response.text
    return response.json()
