"""The session pods: the client side of the pod contract (POST /chat, streamed or not), and
what is made of what a pod answers."""

from service.pods.client import PodClient, PodReply
from service.pods.replies import MAX_REPLY_DEPTH, PodError

__all__ = ["MAX_REPLY_DEPTH", "PodClient", "PodError", "PodReply"]
