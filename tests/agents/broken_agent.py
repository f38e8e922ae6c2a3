"""An agent that breaks one rule of the pod contract on purpose (BREAK=<rule>), for the tests of
`python -m service check-agent`: each rule it breaks must be named FAILed. Standard library only;
without BREAK it behaves (so every other rule passes)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BREAK = os.environ.get("BREAK", "")
REPLIES: dict[str, dict] = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(503 if BREAK == "ready" else 200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw)
        message, message_id = body["message"], body["message_id"]
        if BREAK == "history" and body.get("history"):
            return self._send(400, b'{"error": "what is history?"}')
        if BREAK == "unicode" and not message.isascii():
            return self._send(500, b'{"error": "ascii only"}')
        if BREAK == "large" and len(raw) > 32 * 1024:
            return self._send(413, b'{"error": "too large"}')
        if BREAK == "timeout":
            time.sleep(3)
        if message.startswith("slow:"):
            time.sleep(2)
        if BREAK == "reply":
            return self._send(200, b"plain text", "text/plain")
        reply = REPLIES.get(message_id)
        if reply is None or BREAK == "dedupe":
            reply = {"reply": f"answer {secrets.token_hex(4)}"}
            REPLIES[message_id] = reply
        if BREAK == "streaming" and "text/event-stream" in self.headers.get("Accept", ""):
            frames = b'event: chunk\ndata: {"text": 1}\n\nevent: chunk\ndata: {"text": "x"}\n\n'
            return self._send(200, frames, "text/event-stream")  # no final reply
        return self._send(200, json.dumps(reply).encode())


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = False
    server.block_on_close = True
    if BREAK == "sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
