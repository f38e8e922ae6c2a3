"""The REST API: an app factory that only wires (`app`), the session routes (`views`) and the
others (`admin`) on Blueprints, the error handlers (`errors`), auth, rate limits, the event
stream route, readiness and metrics, and production serving under gunicorn + gevent."""

from service.http.app import create_app
from service.http.requests import parse_json_object

__all__ = ["create_app", "parse_json_object"]
