"""`python -m bench.gthread`: the API under gunicorn's gthread worker (8 threads), the serving
model the service used before gevent, for `bench serving` to compare side by side. Not
patched by gevent: that is the point."""

from __future__ import annotations

from service.core import config
from service.http.serve import Server


class ThreadedServer(Server):
    def load_config(self) -> None:
        super().load_config()
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("threads", 8)


if __name__ == "__main__":
    ThreadedServer(config.from_env()).run()
