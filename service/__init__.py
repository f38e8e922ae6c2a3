"""session-manager: a control plane giving every chat session its own workload on Kubernetes."""

__version__ = "0.1.0"
