"""The floor for the 202 chat path: the least a Flask app under our gunicorn can do per chat.

`python -m bench.floor` serves it with exactly the service's gunicorn setup
(`service.http.serve.Server`: same workers, gevent worker class, connections, keep-alive), read from
the same environment (PORT, BIND_ADDRESS, WEB_CONCURRENCY, WEB_CONNECTIONS, REDIS_URL).
One route does one Redis LPUSH of the body and answers a small JSON 202.
"""

from __future__ import annotations

if __name__ == "__main__":  # as `python -m service serve` does: patched before any import
    from gevent import monkey

    monkey.patch_all()

import redis
from flask import Flask, jsonify, request

from service.core import config
from service.http.serve import Server


def create_floor_app(redis_url: str, socket_timeout_seconds: float) -> Flask:
    client = redis.Redis.from_url(redis_url, socket_timeout=socket_timeout_seconds,
                                  socket_connect_timeout=socket_timeout_seconds,
                                  decode_responses=True)
    app = Flask(__name__)

    @app.post("/session/<session_id>/chat")
    def chat(session_id: str):
        client.lpush(f"floor:q:{session_id}", request.get_data(as_text=True))
        return jsonify({"uuid": session_id, "status": "queued"}), 202

    @app.get("/livez")
    def livez():
        return jsonify({"status": "alive"}), 200

    return app


if __name__ == "__main__":
    settings = config.from_env()
    Server(settings, load=lambda: create_floor_app(
        settings.redis_url, settings.redis_socket_timeout_seconds)).run()
