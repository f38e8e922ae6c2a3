"""The session pod contract's client side: POST /chat to the session's pod (SPEC §7).

A pod answers with JSON, or with `text/event-stream`: `chunk` events (`{"text": ...}`) as it
writes, then one `reply` event holding the JSON reply. The chunks go to `on_chunk` as they
arrive; a stream that ends before its `reply` was cut, and is an error like any other (the
message is delivered again under the same message_id).

What a pod sends is mended where it can be and refused where it cannot, so that everything
passed on can be stored and served as JSON: text that is not Unicode (invalid UTF-8, a lone
surrogate from an agent that cut an emoji in two) becomes U+FFFD, a number JSON cannot carry
(NaN, infinity) becomes null, chunk text that is not a string becomes its JSON text — each
noted in the reply's `warnings`, which the delivery records with the message — and a reply
nested deeper than MAX_REPLY_DEPTH is refused (PodError, permanent: asking again gets the
same).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
import urllib3

from . import names, sse
from .config import Settings

MAX_REPLY_DEPTH = 32  # arrays and objects in one another; deeper replies are refused
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class PodReply:
    """The pod's JSON reply (a JSON object; anything else is wrapped as {"reply": ...}) and
    what had to be mended in what it sent."""

    reply: dict
    warnings: tuple[str, ...] = ()


class PodClient:
    """POST /chat of the session pod contract (SPEC §7).

    The pod is reached through POD_URL_TEMPLATE: by its Service's DNS name in a cluster with
    DNS (the default), or by `{pod_ip}`, the address of its ready pod as the status watch saw
    it (`address_of`), where the control plane has no cluster DNS (the local stack).
    """

    def __init__(self, settings: Settings,
                 address_of: Callable[[str], str | None] | None = None) -> None:
        self.settings = settings
        self.address_of = address_of
        self.needs_address = "{pod_ip}" in settings.pod_url_template
        self.http = requests.Session()
        # Pods are addressed directly: no proxy from the environment, and no re-reading of
        # proxy variables and netrc on every call (a quarter of a forward's CPU otherwise).
        self.http.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=64)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    def url(self, session_id: str) -> str:
        pod_ip = ""
        if self.needs_address:
            pod_ip = (self.address_of(session_id) if self.address_of else None) or ""
            if not pod_ip:
                raise PodError("pod address not known yet")
        return self.settings.pod_url_template.format(
            name=names.object_name(session_id), namespace=self.settings.namespace,
            session_id=session_id, port=self.settings.user_pod_port, pod_ip=pod_ip,
        )

    def chat(self, session_id: str, message: str, message_id: str,
             on_chunk: Callable[[str], None] | None = None) -> PodReply:
        """The pod's JSON reply (the final one of a streamed answer); raises PodError when it
        cannot be had.

        POD_TIMEOUT_SECONDS is a deadline for the whole exchange, not per socket read: each
        read may wait only for what is left of it, so a pod that trickles its body cannot
        outlive the delivery lease (which is longer) and get a second, concurrent delivery."""
        url = self.url(session_id)
        timeout = self.settings.pod_timeout_seconds
        deadline = time.monotonic() + timeout
        try:
            response = self.http.post(
                url.rstrip("/") + "/chat",
                json={"message": message, "message_id": message_id, "session_id": session_id},
                headers={"Accept": f"application/json, {sse.CONTENT_TYPE}"},
                timeout=timeout, stream=True,
            )
        except requests.RequestException as err:
            raise PodError(f"pod unreachable: {type(err).__name__}",
                           not_sent=_never_sent(err)) from err
        try:
            if response.status_code >= 300:
                raise PodError(f"pod answered HTTP {response.status_code}")
            body = _read_before(response, deadline, self.settings.max_reply_bytes)
            warnings: list[str] = []
            if response.headers.get("Content-Type", "").startswith(sse.CONTENT_TYPE):
                reply = _streamed_reply(body, on_chunk, warnings)
            else:
                reply = _json_reply(_decoded(b"".join(body), warnings), warnings)
            return PodReply(reply, tuple(dict.fromkeys(warnings)))
        finally:
            response.close()


class PodError(Exception):
    """A delivery that did not get a reply. not_sent: the request never reached the pod (its
    connection was refused or timed out: right after a wake the Service may not route to the
    new pod yet), so the attempt does not count. permanent: trying again cannot help."""

    def __init__(self, message: str, *, not_sent: bool = False,
                 permanent: bool = False) -> None:
        super().__init__(message)
        self.not_sent = not_sent
        self.permanent = permanent


def _never_sent(err: requests.RequestException) -> bool:
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError) or isinstance(
        err.args[0] if err.args else None, urllib3.exceptions.NewConnectionError)


def _decoded(body: bytes, warnings: list[str]) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        warnings.append("the reply was not valid UTF-8 (replaced with U+FFFD)")
        return body.decode("utf-8", errors="replace")


def _json_reply(text: str, warnings: list[str]) -> dict:
    try:
        reply = json.loads(text)
    except RecursionError:
        raise PodError(f"pod reply nested deeper than {MAX_REPLY_DEPTH} levels",
                       permanent=True) from None
    except ValueError as err:
        raise PodError("pod answered with a body that is not JSON") from err
    reply = _mended(reply, warnings)
    return reply if isinstance(reply, dict) else {"reply": reply}


def _mended(value: Any, warnings: list[str]) -> Any:
    """`value` with every string made valid Unicode; PodError past MAX_REPLY_DEPTH. Walked
    without recursion (a reply may be nested far deeper than the interpreter's stack)."""
    def fix(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            warnings.append("the reply held a number JSON cannot carry (NaN or infinite; "
                            "replaced with null)")
            return None
        if not isinstance(item, str) or _SURROGATE.search(item) is None:
            return item
        warnings.append("the reply held text that is not Unicode (a lone surrogate; replaced "
                        "with U+FFFD)")
        return _SURROGATE.sub("\ufffd", item)

    root = [value]
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_REPLY_DEPTH:
            raise PodError(f"pod reply nested deeper than {MAX_REPLY_DEPTH} levels",
                           permanent=True)
        if isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, (list, dict)):
                    stack.append((item, depth + 1))
                else:
                    node[index] = fix(item)
        else:
            for key in list(node):
                item = node.pop(key)
                node[fix(key)] = fix(item)
                if isinstance(item, (list, dict)):
                    stack.append((item, depth + 1))
    return root[0]


def _streamed_reply(body: Iterator[bytes], on_chunk: Callable[[str], None] | None,
                    warnings: list[str]) -> dict:
    for frame in sse.parse(sse.lines(body, on_invalid=lambda: warnings.append(
            "the stream was not valid UTF-8 (replaced with U+FFFD)"))):
        if frame.event == "chunk":
            if on_chunk is not None:
                on_chunk(_chunk_text(frame.data, warnings))
        elif frame.event == "reply":
            return _json_reply(frame.data, warnings)
        elif frame.event == "error":
            raise PodError(f"pod reported an error: {frame.data[:200]}")
    raise PodError("pod answer cut: the stream ended before its final reply")


def _chunk_text(data: str, warnings: list[str]) -> str:
    """A chunk's text: `{"text": "..."}`, or the data itself when it is not JSON."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        text: Any = data  # a bare text chunk
    else:
        text = parsed.get("text", "") if isinstance(parsed, dict) else parsed
    if text is None:
        return ""
    if not isinstance(text, str):
        warnings.append("a chunk's text was not a string (its JSON text was relayed)")
        try:
            text = json.dumps(text, ensure_ascii=False)
        except (ValueError, RecursionError):
            text = ""
    if _SURROGATE.search(text):
        warnings.append("a chunk held text that is not Unicode (replaced with U+FFFD)")
        text = _SURROGATE.sub("\ufffd", text)
    return text


def _read_before(response: requests.Response, deadline: float,
                 max_bytes: int) -> Iterator[bytes]:
    """The body as it arrives, read while time is left (the socket's timeout shrinks before
    every read) and while it fits MAX_REPLY_BYTES."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    size = 0
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PodError("pod did not answer within POD_TIMEOUT_SECONDS")
            if sock is not None:
                sock.settimeout(remaining)
            chunk = response.raw.read1(65536)
            if not chunk:
                return
            size += len(chunk)
            if size > max_bytes:
                raise PodError(f"pod reply larger than MAX_REPLY_BYTES ({max_bytes} bytes)",
                               permanent=True)
            yield chunk
    except (urllib3.exceptions.HTTPError, OSError) as err:
        if time.monotonic() >= deadline:
            raise PodError("pod did not answer within POD_TIMEOUT_SECONDS") from err
        raise PodError(f"pod answer cut: {type(err).__name__}") from err
