"""The session pod contract's client side: POST /chat to the session's pod (SPEC §7).

A pod answers with JSON, or with `text/event-stream`: `chunk` events (`{"text": ...}`) as it
writes, then one `reply` event holding the JSON reply. The chunks go to `on_chunk` as they
arrive; a stream that ends before its `reply` was cut, and is an error like any other (the
message is delivered again under the same message_id).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator

import requests
import urllib3

from service.core import names, sse
from service.core.config import Settings
from service.pods.replies import PodError, decoded, json_reply, streamed_reply


@dataclasses.dataclass(frozen=True)
class PodReply:
    """The pod's JSON reply (a JSON object; anything else is wrapped as {"reply": ...}) and
    what had to be mended in what it sent."""

    reply: dict
    warnings: tuple[str, ...] = ()
    first_byte_ms: int = 0  # when the pod's answer began (epoch ms): the wake's last phase


def request_body(message: str, message_id: str, session_id: str, user_id: str,
                 history: str) -> bytes:
    """POST /chat's body (SPEC §7). `history` is JSON text as the store built it (the
    session's earlier exchanges), put in as it is rather than parsed and encoded again."""
    fields = json.dumps({"message": message, "message_id": message_id,
                         "session_id": session_id, "user_id": user_id})
    return f"{fields[:-1]}, \"history\": {history}}}".encode()


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

    def chat(self, session_id: str, message: str, message_id: str, *, user_id: str = "",
             history: str = "[]", on_chunk: Callable[[str], None] | None = None) -> PodReply:
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
                data=request_body(message, message_id, session_id, user_id, history),
                headers={"Accept": f"application/json, {sse.CONTENT_TYPE}",
                         "Content-Type": "application/json"},
                timeout=timeout, stream=True,
            )
        except requests.RequestException as err:
            raise PodError(f"pod unreachable: {type(err).__name__}",
                           not_sent=_never_sent(err)) from err
        first_byte_ms = int(time.time() * 1000)  # its status line and headers are in
        try:
            if response.status_code >= 300:
                raise PodError(f"pod answered HTTP {response.status_code}")
            body = _read_before(response, deadline, self.settings.max_reply_bytes)
            warnings: list[str] = []
            if response.headers.get("Content-Type", "").startswith(sse.CONTENT_TYPE):
                reply = streamed_reply(body, on_chunk, warnings)
            else:
                reply = json_reply(decoded(b"".join(body), warnings), warnings)
            return PodReply(reply, tuple(dict.fromkeys(warnings)), first_byte_ms)
        finally:
            response.close()




def _never_sent(err: requests.RequestException) -> bool:
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError) or isinstance(
        err.args[0] if err.args else None, urllib3.exceptions.NewConnectionError)












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
