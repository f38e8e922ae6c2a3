"""Apply and sweep against a real kube-apiserver (1.35) on etcd 3.6, both built from their Go
modules."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from service import bundle, store
from service.core import names
from service.core.config import REPO_ROOT, Settings
from service.core.errors import KubeRejected
from service.kube import Kube


def render(settings: Settings, session_id: str) -> bundle.Bundle:
    return bundle.render(session_id, settings, store.keda_keys(session_id))


def live_objects(kube: Kube, rendered: bundle.Bundle, session_id: str | None) -> list[dict]:
    found = []
    for kind in rendered.kinds():
        found += kube.list_objects(kind, bundle.label_selector(session_id))
    return found


def versions(kube: Kube, rendered: bundle.Bundle, session_id: str) -> dict[tuple, str]:
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for o in live_objects(kube, rendered, session_id)}


@pytest.fixture
def session_id() -> str:
    return names.new_session_id()


def test_apply_creates_every_object_with_labels(kube, settings, session_id):
    rendered = render(settings, session_id)
    kube.apply(rendered)
    live = live_objects(kube, rendered, session_id)
    assert sorted(o["kind"] for o in live) == sorted(o["kind"] for o in rendered.objects)
    for obj in live:
        assert obj["metadata"]["labels"][names.MANAGED_BY_LABEL] == "session-manager"
        assert obj["metadata"]["labels"][names.SESSION_LABEL] == session_id
    scaled = next(o for o in live if o["kind"] == "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["sessionId"] == session_id


def test_reapplying_the_same_bundle_changes_nothing(kube, settings, session_id):
    rendered = render(settings, session_id)
    kube.apply(rendered)
    before = versions(kube, rendered, session_id)
    kube.apply(render(settings, session_id))
    assert versions(kube, rendered, session_id) == before


def test_reapply_leaves_replicas_set_by_the_autoscaler(kube, settings, session_id):
    rendered = render(settings, session_id)
    kube.apply(rendered)
    apps = k8s.AppsV1Api(kube.api_client)
    name = names.object_name(session_id)
    # KEDA's HPA scales through the scale subresource under its own field manager.
    apps.patch_namespaced_deployment_scale(name, kube.namespace, {"spec": {"replicas": 0}},
                                           field_manager="keda-hpa")
    assert kube.deployment_state(session_id).replicas == 0
    kube.apply(render(settings, session_id))
    assert kube.deployment_state(session_id).replicas == 0
    apps.patch_namespaced_deployment_scale(name, kube.namespace, {"spec": {"replicas": 1}},
                                           field_manager="keda-hpa")
    kube.apply(render(settings, session_id))
    assert kube.deployment_state(session_id).replicas == 1


def test_a_changed_template_value_rolls_out_on_reapply(kube, settings, session_id):
    kube.apply(render(settings, session_id))
    kube.apply(render(settings.replace(user_pod_image="agent:2.0.0"), session_id))
    deployment = k8s.AppsV1Api(kube.api_client).read_namespaced_deployment(
        names.object_name(session_id), kube.namespace)
    assert deployment.spec.template.spec.containers[0].image == "agent:2.0.0"


def test_sweep_removes_one_session_and_nothing_else(kube, settings):
    mine, other = names.new_session_id(), names.new_session_id()
    rendered = render(settings, mine)
    kube.apply(rendered)
    kube.apply(render(settings, other))
    # Kubernetes 1.35 serves deletecollection for every kind of the bundle, Services included
    # (since 1.23), so one call per kind sweeps it. The list+delete fallback for older servers'
    # 405 is kept (kube._sweep_kind) but no server here answers 405 any more.
    kube.delete(mine, rendered.kinds())
    assert live_objects(kube, rendered, mine) == []
    assert len(live_objects(kube, rendered, other)) == 4
    kube.delete(mine, rendered.kinds())  # a second delete is fine


def test_sweep_covers_a_kind_added_by_a_new_template(kube, settings, session_id, tmp_path: Path):
    templates = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", templates)
    (templates / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ name }}-config\n"
        "data:\n  session: {{ session_id }}\n")
    extended = settings.replace(templates_dir=templates)
    rendered = render(extended, session_id)
    kube.apply(rendered)
    assert len(live_objects(kube, rendered, session_id)) == 5
    kube.delete(session_id, rendered.kinds())
    assert live_objects(kube, rendered, session_id) == []


@pytest.mark.parametrize("template, broken", [
    ("scaledobject.yaml", ("pollingInterval: {{ keda.polling_interval }}",
                           'pollingInterval: "five"')),
    ("service.yaml", ("port: 80", "port: 99999")),
])
def test_a_rejected_object_leaves_nothing_behind(kube, settings, session_id, tmp_path: Path,
                                                 template, broken):
    templates = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", templates)
    text = (templates / template).read_text()
    assert broken[0] in text
    (templates / template).write_text(text.replace(broken[0], broken[1]))
    rendered = render(settings.replace(templates_dir=templates), session_id)
    with pytest.raises(KubeRejected):
        kube.apply(rendered)
    assert live_objects(kube, rendered, session_id) == []


def test_status_reads_the_deployment(kube, settings, session_id):
    assert not kube.deployment_state(session_id).exists
    kube.apply(render(settings, session_id))
    state = kube.deployment_state(session_id)
    assert state.exists and state.replicas == 1 and state.ready_replicas == 0


def test_pause_annotation_is_set_read_back_and_survives_reapply(kube, settings, session_id):
    kube.apply(render(settings, session_id))
    assert kube.set_paused(session_id, True) is True
    kube.apply(render(settings, session_id))
    assert kube.is_paused(session_id) is True
    assert kube.set_paused(session_id, False) is False
    assert kube.is_paused(session_id) is False


def consistent_reads(kube: Kube) -> Counter:
    """The API server's consistent reads (lists) by resource and whether they fell back from
    its watch cache to etcd, from its own metrics."""
    request = kube.api_client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = kube.api_client.call_api(*request[:3])
    counts: Counter = Counter()
    for family in text_string_to_metric_families(response.read().decode()):
        if family.name == "apiserver_watch_cache_consistent_read":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    counts[(labels["resource"], labels["fallback"])] += int(sample.value)
    return counts


def test_a_sweep_is_served_from_the_api_servers_cache(kube, settings, session_id):
    """A label sweep picks one session's objects out of every object of the kind. The API
    server does that in its watch cache only when etcd answers its watch-progress requests
    (etcd >= 3.5.13); with Debian's etcd 3.4 it read every object from etcd, ~5 s a sweep at
    5,000 sessions, and archiving ran at 0.35 sessions a second."""
    rendered = render(settings, session_id)
    kube.apply(rendered)
    before = consistent_reads(kube)
    kube.delete(session_id, rendered.kinds())
    after = consistent_reads(kube) - before
    assert after[("deployments", "false")] >= 1, after
    assert after[("scaledobjects", "false")] >= 1, after
    assert not [key for key in after if key[1] == "true"], after
    assert live_objects(kube, rendered, session_id) == []
