"""kind clusters for `make e2e`: the engine, the egress guard, the node image, the cluster."""

from .cluster import KindCluster, missing_requirements

__all__ = ["KindCluster", "missing_requirements"]
