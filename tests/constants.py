"""What the test layers share: the API key every installation accepts, the worker processes'
lease, the real-cluster layer's polling pace."""

API_KEY = "test-api-key-0123456789abcdef"
WORKER_LEASE_SECONDS = 4  # the delivery lease of worker processes (tests/conftest.py)
KUBECTL_POLL_SECONDS = 0.5  # tests/cluster: a poll there may start a kubectl process
