"""`python -m service check-agent URL`: does an agent meet the pod contract (SPEC §7,
service/pods/openapi.yaml)? One line per rule, PASS, FAIL or SKIP, with the reason — before
the agent meets real sessions rather than after.

The rules are what the control plane counts on: the agent is ready at /healthz; it answers
POST /chat with a JSON object (or a stream of `chunk` events and one final `reply`) within
POD_TIMEOUT_SECONDS; the same message_id twice is answered the same (a redelivery after a lost
answer must not be processed as a new message); it accepts the conversation in `history`,
large messages and any Unicode; and, when the check starts it (`--run`), it finishes the answer
in progress and exits when told to stop (SIGTERM, as a scale to 0 does).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import time
from collections.abc import Callable

import requests

from service.core import sse
from service.pods.agent_process import stop_while_answering

UNICODE_SAMPLE = "héllo wörld — 你好 — مرحبا — 👩‍💻🚀 — e\u0301"


@dataclasses.dataclass
class Verdict:
    rule: str
    outcome: str  # PASS | FAIL | SKIP
    reason: str

    def line(self) -> str:
        return f"{self.outcome:4} {self.rule:10} {self.reason}"


class Answer:
    """One POST /chat: the JSON reply (the final one of a stream), the chunks, the time."""

    def __init__(self, response: requests.Response, started: float) -> None:
        self.status = response.status_code
        self.content_type = response.headers.get("Content-Type", "")
        self.streamed = self.content_type.startswith(sse.CONTENT_TYPE)
        self.chunks: list[object] = []
        self.events: list[str] = []
        self.reply: object = None
        if self.streamed:
            for frame in sse.parse(sse.lines(response.iter_content(chunk_size=None))):
                self.events.append(frame.event)
                data = _json_or_none(frame.data)
                if frame.event == "chunk":
                    self.chunks.append(data.get("text") if isinstance(data, dict) else data)
                elif frame.event == "reply":
                    self.reply = data
        else:
            self.reply = _json_or_none(response.content)
        self.seconds = time.monotonic() - started


def _json_or_none(raw: str | bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


class AgentCheck:
    def __init__(self, url: str, *, timeout_seconds: float = 30.0,
                 max_message_chars: int = 16000, history_max_bytes: int = 64 * 1024) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout_seconds
        self.max_message_chars = max_message_chars
        self.history_max_bytes = history_max_bytes
        self.session_id = "s" + "c" * 16
        self.http = requests.Session()
        self.http.trust_env = False
        self.slowest = 0.0
        self.timed_out = 0

    def chat(self, message: str, message_id: str | None = None, *,
             history: list | None = None, stream: bool = True) -> Answer:
        body = {"message": message, "message_id": message_id or secrets.token_hex(8),
                "session_id": self.session_id, "user_id": "check-agent",
                "history": history or []}
        accept = f"application/json, {sse.CONTENT_TYPE}" if stream else "application/json"
        started = time.monotonic()
        try:
            response = self.http.post(f"{self.url}/chat", json=body, timeout=self.timeout,
                                      headers={"Accept": accept}, stream=True)
        except requests.Timeout:
            self.timed_out += 1
            raise
        try:
            answer = Answer(response, started)
        finally:
            response.close()
        self.slowest = max(self.slowest, answer.seconds)
        return answer

    def not_ready(self, reason: str) -> list[Verdict]:
        """The verdicts when the agent never became ready: nothing else can be checked."""
        return [Verdict("ready", "FAIL", reason),
                *(Verdict(rule, "SKIP", "the agent never became ready")
                  for rule in ("reply", "dedupe", "history", "unicode", "large", "streaming",
                               "timeout", "sigterm"))]

    def run(self, *, started_process: subprocess.Popen | None = None) -> list[Verdict]:
        rules: list[tuple[str, Callable[[], str]]] = [
            ("ready", self._ready), ("reply", self._reply), ("dedupe", self._dedupe),
            ("history", self._history), ("unicode", self._unicode), ("large", self._large),
            ("streaming", self._streaming), ("timeout", self._within_timeout),
        ]
        verdicts = []
        for rule, check in rules:
            try:
                verdicts.append(Verdict(rule, "PASS", check()))
            except _Skip as skip:
                verdicts.append(Verdict(rule, "SKIP", str(skip)))
            except (AssertionError, requests.RequestException) as err:
                verdicts.append(Verdict(rule, "FAIL", _reason(err)))
        if started_process is None:
            verdicts.append(Verdict("sigterm", "SKIP",
                                    "not started by the check (give --run to check it)"))
        else:
            try:
                verdicts.append(Verdict("sigterm", "PASS", self._sigterm(started_process)))
            except (AssertionError, requests.RequestException) as err:
                verdicts.append(Verdict("sigterm", "FAIL", _reason(err)))
        return verdicts

    # -- the rules -----------------------------------------------------------------------

    def _ready(self) -> str:
        response = self.http.get(f"{self.url}/healthz", timeout=self.timeout)
        assert response.status_code == 200, f"GET /healthz answered {response.status_code}"
        return "GET /healthz answers 200"

    def _json_object(self, answer: Answer, what: str) -> None:
        assert answer.status == 200, f"{what}: POST /chat answered HTTP {answer.status}"
        assert isinstance(answer.reply, dict), (
            f"{what}: the reply is not a JSON object ({answer.content_type or 'no type'})")

    def _reply(self) -> str:
        answer = self.chat("hello from check-agent", stream=False)
        self._json_object(answer, "a plain message")
        return f"a JSON object in {answer.seconds * 1000:.0f} ms"

    def _dedupe(self) -> str:
        message_id = f"check-{secrets.token_hex(6)}"
        first = self.chat("count this once", message_id, stream=False)
        again = self.chat("count this once", message_id, stream=False)
        self._json_object(first, "the first delivery")
        self._json_object(again, "the same message_id again")
        assert _same(first.reply, again.reply), (
            "the same message_id was answered differently (a redelivery must get the first "
            f"answer): {_short(first.reply)} then {_short(again.reply)}")
        return "the same message_id is answered the same"

    def _history(self) -> str:
        history = [{"message_id": f"h-{n}", "message": f"earlier message {n}",
                    "reply": {"reply": f"earlier reply {n}"}, "state": "delivered"}
                   for n in range(3)]
        history.append({"message_id": "h-3", "message": "a failed one", "reply": None,
                        "state": "failed"})
        self._json_object(self.chat("what did I say?", history=history, stream=False),
                          "a message with history")
        return "accepts `history` (delivered and failed exchanges)"

    def _unicode(self) -> str:
        answer = self.chat(UNICODE_SAMPLE, stream=False)
        self._json_object(answer, "a Unicode message")
        return "accepts emoji, CJK, right-to-left and combining text"

    def _large(self) -> str:
        entry = {"message_id": "big", "message": "x" * 1000, "reply": {"reply": "y" * 1000},
                 "state": "delivered"}
        history = [dict(entry, message_id=f"big-{n}")
                   for n in range(max(1, self.history_max_bytes // 2100))]
        answer = self.chat("z" * self.max_message_chars, history=history, stream=False)
        self._json_object(answer, f"a {self.max_message_chars}-character message")
        return (f"a {self.max_message_chars}-character message with "
                f"{len(json.dumps(history)) // 1024} KiB of history")

    def _streaming(self) -> str:
        answer = self.chat("please stream this answer")
        if not answer.streamed:
            self._json_object(answer, "with Accept: text/event-stream")
            raise _Skip("answers JSON even when a stream is accepted (streaming is optional)")
        assert answer.status == 200, f"the stream answered HTTP {answer.status}"
        replies = [event for event in answer.events if event == "reply"]
        assert replies == ["reply"], f"a stream ends with exactly one `reply`: {answer.events}"
        assert answer.events[-1] == "reply", f"nothing may follow the `reply`: {answer.events}"
        assert set(answer.events[:-1]) <= {"chunk"}, f"unknown events: {answer.events}"
        assert all(isinstance(text, str) for text in answer.chunks), (
            "every chunk is {\"text\": \"...\"}")
        assert isinstance(answer.reply, dict), "the `reply` event holds a JSON object"
        return f"{len(answer.chunks)} chunks, then one `reply`"

    def _within_timeout(self) -> str:
        assert not self.timed_out, (
            f"{self.timed_out} answer(s) did not come within POD_TIMEOUT_SECONDS "
            f"({self.timeout:g} s)")
        assert self.slowest <= self.timeout, (
            f"the slowest answer took {self.slowest:.1f} s (POD_TIMEOUT_SECONDS {self.timeout})")
        return f"the slowest answer took {self.slowest:.2f} s (limit {self.timeout:g} s)"

    def _sigterm(self, process: subprocess.Popen) -> str:
        return stop_while_answering(process, self.url, session_id=self.session_id,
                                    timeout=self.timeout)


class _Skip(Exception):
    pass


def _same(first: object, again: object) -> bool:
    """Equal, but for a top-level "duplicate" marker an agent may put on a redelivery."""
    def bare(reply: object) -> object:
        return {k: v for k, v in reply.items() if k != "duplicate"} \
            if isinstance(reply, dict) else reply
    return bare(first) == bare(again)


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reason(err: object) -> str:
    if isinstance(err, requests.RequestException):
        return f"no answer: {type(err).__name__}"
    return str(err) or type(err).__name__
