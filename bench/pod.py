"""The demo agent as the benchmark's pod: demo_agent/agent.py's own handler and state, served
with a listen backlog of 512 instead of socketserver's default of 5.

One agent process stands in for every session's pod here, so it sees up to 16 connections
opening at once (8 delivery threads per worker); with a backlog of 5 the kernel drops SYNs and
clients stall for 1 s or 3 s retransmits (a real pod gets one delivery at a time per session).
`python -m bench.pod`; environment as for the agent: PORT, AGENT_HOST, AGENT_DELAY_SECONDS.
"""

from __future__ import annotations

import os
from http.server import ThreadingHTTPServer

from demo_agent import agent


class PodServer(ThreadingHTTPServer):
    request_queue_size = 512


def main() -> None:
    agent.Handler.state = agent.AgentState(os.environ.get("AGENT_STATE_FILE") or None)
    agent.Handler.delay_seconds = float(os.environ.get("AGENT_DELAY_SECONDS") or 0)
    agent.Handler.session_id = os.environ.get("SESSION_ID", "")
    host = os.environ.get("AGENT_HOST") or "127.0.0.1"
    server = PodServer((host, int(os.environ.get("PORT") or 1111)), agent.Handler)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
