"""kind clusters for `make e2e`: the engine, the egress guard, the node image, the cluster."""

from .cluster import KindCluster, down, missing_requirements

__all__ = ["KindCluster", "down", "missing_requirements"]
