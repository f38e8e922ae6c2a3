"""The REST API in-process (Flask's test client), called with the API key: what the
`make_api` fixture hands a test."""

from __future__ import annotations

from devcluster.processes import wait_until
from service.core.config import Settings
from service.http import create_app
from service.kube import Kube

from .constants import API_KEY


class SessionApi:
    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.app = create_app(settings, kube=kube)
        self.client = self.app.test_client()
        self.headers = {"X-API-Key": API_KEY}

    def create(self, user_id: str = "user-1") -> str:
        response = self.client.post("/session/create", json={"user_id": user_id},
                                    headers=self.headers)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["uuid"]

    def chat(self, session_id: str, message: str,
             message_id: str | None = None) -> tuple[int, dict]:
        body = {"message": message}
        if message_id is not None:
            body["message_id"] = message_id
        response = self.client.post(f"/session/{session_id}/chat", json=body,
                                    headers=self.headers)
        return response.status_code, response.get_json()

    def messages(self, session_id: str) -> list[dict]:
        response = self.client.get(f"/session/{session_id}/messages?limit=500",
                                   headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["messages"]

    def status(self, session_id: str) -> dict:
        response = self.client.get(f"/session/{session_id}/status", headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def delivered(self, session_id: str, message_id: str) -> dict | None:
        """The message, once it is delivered."""
        for message in self.messages(session_id):
            if message["message_id"] == message_id and message.get("state") == "delivered":
                return message
        return None

    def wait_status(self, session_id: str, wanted: set[str], *, timeout: float,
                    interval: float = 0.5) -> dict:
        """The status body once the status is one of `wanted`."""
        return wait_until(lambda: (s := self.status(session_id))["status"] in wanted and s,
                          timeout=timeout, interval=interval, what=f"status in {wanted}")

    def close(self) -> None:
        self.app.extensions["session_manager"].store.redis.close()
