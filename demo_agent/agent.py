"""A small session pod implementing the pod contract (SPEC §7, service/pods/openapi.yaml),
standard library only: the reference implementation for anyone writing their own agent.

    POST /chat  {"message", "message_id", "session_id", "user_id", "history"}
                -> {"reply", "message_id", ...}
    GET  /healthz -> 200 when ready

Replies are deduplicated by (session_id, message_id): a redelivered message gets the reply it
got the first time and is not processed again. With AGENT_STATE_FILE set, the replies and a
log of every delivery survive a restart (the tests kill the agent mid-delivery);
GET /deliveries returns that log.

Environment: PORT (default 1111), AGENT_HOST (default 0.0.0.0), SESSION_ID,
AGENT_DELAY_SECONDS (time spent "thinking"), AGENT_STARTUP_DELAY_SECONDS (time before it
listens: an agent importing a large library), AGENT_STATE_FILE, AGENT_WORKSPACE (default
/workspace: the session's volume, where the workspace template set mounts one).

Messages it understands, to show what a pod behind the control plane can count on:
- "recall": answered with the earlier user messages of the conversation, from the `history`
  the control plane sends with every delivery — so a pod woken from zero (or restored from an
  archive) still knows what was said;
- "write:NAME TEXT" / "read:NAME": a file in the workspace, which survives sleep and archive
  when the session has a volume (templates-workspace/);
- "fail:..." answers 500, to exercise retries; "slow:N ..." thinks N more seconds (at most
  120), to play a slow LLM agent. Anything else is echoed.

Streaming mode (AGENT_STREAM=1, when the request accepts text/event-stream): the reply is
written word by word as `chunk` events, AGENT_STREAM_DELAY_SECONDS (default 0.05) apart, then
one `reply` event with the JSON reply, as an LLM agent streams tokens. A message starting with
"cut:" has its first stream cut after half its words (the connection closed with no final
reply), to exercise a delivery cut mid-stream; the next attempt streams it whole.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY_BYTES = 8 * 1024 * 1024  # a long conversation's history comes with every message
MAX_REMEMBERED = 10000
_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AgentState:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.replies: dict[str, dict] = {}
        self.deliveries: list[dict] = []
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
            self.replies = saved.get("replies", {})
            self.deliveries = saved.get("deliveries", [])

    def record_delivery(self, session_id: str, message_id: str) -> None:
        with self.lock:
            self.deliveries.append({"session_id": session_id, "message_id": message_id,
                                    "at": time.time()})
            self._save()

    def reply_for(self, key: str) -> dict | None:
        with self.lock:
            return self.replies.get(key)

    def remember(self, key: str, reply: dict) -> None:
        with self.lock:
            self.replies[key] = reply
            while len(self.replies) > MAX_REMEMBERED:
                self.replies.pop(next(iter(self.replies)))
            self._save()

    def _save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"replies": self.replies, "deliveries": self.deliveries[-MAX_REMEMBERED:]},
                      handle)
        os.replace(tmp, self.path)


class Server(ThreadingHTTPServer):
    # The stdlib default backlog of 5 makes concurrent connects stall on SYN retransmits.
    request_queue_size = 128
    # On shutdown, server_close() waits for the requests in progress: a reply being written
    # when the pod is scaled down is finished, not cut.
    daemon_threads = False
    block_on_close = True


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-agent/0.1"
    state: AgentState
    delay_seconds = 0.0
    session_id = ""
    stream = False
    stream_delay_seconds = 0.05
    workspace = "/workspace"
    cut_once: set[str] = set()  # message keys whose first stream was cut already

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the test output

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        elif self.path == "/deliveries":
            with self.state.lock:
                self._send(200, {"deliveries": list(self.state.deliveries)})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/chat":
            self._send(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            self._send(400, {"error": "send a JSON body"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            message = str(body["message"])
            message_id = str(body["message_id"])
            session_id = str(body.get("session_id") or self.session_id)
            history = body.get("history") or []
            if not isinstance(history, list):
                raise TypeError("history is not a list")
        except (ValueError, KeyError, TypeError):
            self._send(400, {"error": "expected {message, message_id, session_id, user_id, "
                                      "history}"})
            return
        self.state.record_delivery(session_id, message_id)
        key = f"{session_id}/{message_id}"
        cached = self.state.reply_for(key)
        if cached is not None:
            self._send(200, {**cached, "duplicate": True})
            return
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if message.startswith("slow:"):
            seconds = message[len("slow:"):].split(" ", 1)[0]
            time.sleep(min(120.0, float(seconds) if seconds.replace(".", "", 1).isdigit() else 0))
        if message.startswith("fail:"):
            self._send(500, {"error": "the agent failed on purpose"})
            return
        reply = {"reply": self._answer(message, history), "message_id": message_id,
                 "session_id": session_id, "pid": os.getpid()}
        if self.stream and "text/event-stream" in self.headers.get("Accept", ""):
            if not self._stream(key, reply):
                return  # cut on purpose: nothing remembered, the next attempt streams again
        else:
            self._send(200, reply)
        self.state.remember(key, reply)

    def _answer(self, message: str, history: list) -> str:
        if message.strip() == "recall":
            earlier = [str(entry.get("message")) for entry in history
                       if isinstance(entry, dict) and "message" in entry]
            return "recall: " + (" | ".join(earlier) if earlier else "(nothing earlier)")
        if message.startswith(("write:", "read:")):
            return self._workspace(message)
        return f"echo: {message}"

    def _workspace(self, message: str) -> str:
        command, _, rest = message.partition(":")
        name, _, text = rest.partition(" ")
        if not _FILE_NAME.match(name):
            return f"{command}: a file name is 1 to 64 of A-Z a-z 0-9 . _ -"
        path = os.path.join(self.workspace, name)
        try:
            if command == "write":
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(text)
                return f"wrote {name} ({len(text.encode())} bytes)"
            with open(path, encoding="utf-8") as handle:
                return f"read {name}: {handle.read()}"
        except FileNotFoundError:
            return f"no file {name} in the workspace"
        except OSError as err:
            return f"the workspace cannot be used ({err.strerror})"

    def _stream(self, key: str, reply: dict) -> bool:
        """Write the reply word by word; False when this stream was cut on purpose."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        words = reply["reply"].split(" ")
        cut_after = None
        if reply["reply"].startswith("echo: cut:") and key not in self.cut_once:
            self.cut_once.add(key)
            cut_after = max(1, len(words) // 2)
        for index, word in enumerate(words):
            if cut_after is not None and index == cut_after:
                self.close_connection = True
                return False
            text = word if index == 0 else " " + word
            self.wfile.write(f"event: chunk\ndata: {json.dumps({'text': text})}\n\n".encode())
            self.wfile.flush()
            time.sleep(self.stream_delay_seconds)
        self.wfile.write(f"event: reply\ndata: {json.dumps(reply)}\n\n".encode())
        self.wfile.flush()
        return True


def main() -> None:
    port = int(os.environ.get("PORT") or 1111)
    Handler.state = AgentState(os.environ.get("AGENT_STATE_FILE") or None)
    Handler.delay_seconds = float(os.environ.get("AGENT_DELAY_SECONDS") or 0)
    Handler.session_id = os.environ.get("SESSION_ID", "")
    Handler.stream = os.environ.get("AGENT_STREAM", "").lower() in ("1", "true", "yes")
    Handler.stream_delay_seconds = float(os.environ.get("AGENT_STREAM_DELAY_SECONDS") or 0.05)
    Handler.workspace = os.environ.get("AGENT_WORKSPACE") or "/workspace"
    # An agent that imports a large library (an LLM client, a model) before it listens.
    time.sleep(float(os.environ.get("AGENT_STARTUP_DELAY_SECONDS") or 0))
    host = os.environ.get("AGENT_HOST") or "0.0.0.0"  # noqa: S104 - a pod serves its IP
    server = Server((host, port), Handler)
    # PID 1 in a container has no default SIGTERM action: without a handler a scaled-down pod
    # lingers for its whole grace period, holding its CPU request on the node.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(json.dumps({"message": "demo agent listening", "port": port}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
