"""What a session pod answers, read as the pod contract says (SPEC §7): a JSON reply, or a
`text/event-stream` of `chunk` events then one `reply`.

What a pod sends is mended where it can be and refused where it cannot, so that everything
passed on can be stored and served as JSON: text that is not Unicode (invalid UTF-8, a lone
surrogate from an agent that cut an emoji in two) becomes U+FFFD, a number JSON cannot carry
(NaN, infinity) becomes null, chunk text that is not a string becomes its JSON text — each
noted in the reply's `warnings`, which the delivery records with the message — and a reply
nested deeper than MAX_REPLY_DEPTH is refused (PodError, permanent: asking again gets the
same).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from service.core import sse

MAX_REPLY_DEPTH = 32  # arrays and objects in one another; deeper replies are refused
_SURROGATE = re.compile("[\ud800-\udfff]")


class PodError(Exception):
    """A delivery that did not get a reply. not_sent: the request never reached the pod (its
    connection was refused or timed out: right after a wake the Service may not route to the
    new pod yet), so the attempt does not count. permanent: trying again cannot help."""

    def __init__(self, message: str, *, not_sent: bool = False,
                 permanent: bool = False) -> None:
        super().__init__(message)
        self.not_sent = not_sent
        self.permanent = permanent


def decoded(body: bytes, warnings: list[str]) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        warnings.append("the reply was not valid UTF-8 (replaced with U+FFFD)")
        return body.decode("utf-8", errors="replace")


def json_reply(text: str, warnings: list[str]) -> dict:
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


def streamed_reply(body: Iterator[bytes], on_chunk: Callable[[str], None] | None,
                    warnings: list[str]) -> dict:
    for frame in sse.parse(sse.lines(body, on_invalid=lambda: warnings.append(
            "the stream was not valid UTF-8 (replaced with U+FFFD)"))):
        if frame.event == "chunk":
            if on_chunk is not None:
                on_chunk(_chunk_text(frame.data, warnings))
        elif frame.event == "reply":
            return json_reply(frame.data, warnings)
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

