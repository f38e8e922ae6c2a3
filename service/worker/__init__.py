"""The worker process: the delivery loop and the leader roles (status watch, reconciler,
archiver) under leases, the push scaler KEDA talks to, and its liveness."""

from service.worker.runner import Worker

__all__ = ["Worker"]
