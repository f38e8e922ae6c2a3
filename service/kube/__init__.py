"""The cluster: the only package that imports the Kubernetes client. The client of the
sessions namespace (`Kube`: apply, sweep, list, pause), its watches, cluster set-up for the dev
stack and the tests, and what the service does to which kinds."""

from service.kube.client import LIST_PAGE_SIZE, Kube, load_api_client
from service.kube.kinds import (
    DEPLOYMENT_KIND,
    PAUSE_KIND,
    PAUSED_REPLICAS_ANNOTATION,
    VERBS,
    WATCHED_KINDS,
    DeploymentState,
    required_permissions,
    state_of_deployment,
)
from service.kube.setup import ClusterSetup
from service.kube.watching import WATCH_READ_MARGIN_SECONDS, Watcher

__all__ = ["DEPLOYMENT_KIND", "LIST_PAGE_SIZE", "PAUSED_REPLICAS_ANNOTATION", "PAUSE_KIND",
           "VERBS", "WATCHED_KINDS", "WATCH_READ_MARGIN_SECONDS", "ClusterSetup",
           "DeploymentState", "Kube", "Watcher", "load_api_client", "required_permissions",
           "state_of_deployment"]
