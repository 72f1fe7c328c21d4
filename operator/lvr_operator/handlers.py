"""kopf handlers: small, typed, and all alike — they call `service.reconcile_object` and translate
its Plan: a wait raises TemporaryError(delay), an unusable spec PermanentError (after the InvalidSpec
condition is written). Pod events re-reconcile the owning custom resource.

Everything is registered in the operator's own registry, built by `build_registry(settings)` and handed to
kopf (runner.run_operator; main.py for `kopf run`): importing this module registers nothing anywhere.
The registry's kopf indices feed the watch cache (cache.py) that reconciles read from.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from lvr_operator import metrics
from lvr_operator.api.common import GROUP, VERSION
from lvr_operator.api.kinds import KINDS
from lvr_operator.cache import CHILD_INDEXES, INDEXES, POD_INDEX, RESOURCE_INDEXES, WatchCache, child_entry, \
    resource_entry
from lvr_operator.cluster import Cluster, RetryLater
from lvr_operator.manifests.common import LABEL_KIND, LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY, name_problem
from lvr_operator.service import reconcile_object
from lvr_operator.settings import OperatorSettings

log = logging.getLogger("lvr_operator")
CONFIG: dict[str, Any] = {"settings": OperatorSettings(), "cluster": None}
_KIND_BY_LABEL = {k.kind.lower(): k.kind for k in KINDS}
_OURS = {LABEL_MANAGED_BY: MANAGED_BY}
# The children's kinds as kopf names them (group, version, plural)
_CHILD_RESOURCES = {"ConfigMap": ("", "v1", "configmaps"), "Service": ("", "v1", "services"),
                    "ServiceAccount": ("", "v1", "serviceaccounts"),
                    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
                    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings")}


def _cluster(indices: dict[str, Any] | None = None) -> Cluster:
    """The API adapter; given a handler's keyword arguments, bound to the running operator's indices."""
    if CONFIG["cluster"] is None:
        CONFIG["cluster"] = Cluster()
        metrics.count_api_errors(CONFIG["cluster"].api)
    cluster: Cluster = CONFIG["cluster"]
    if indices is not None and CONFIG["settings"].watch_cache and all(i in indices for i in INDEXES):
        if cluster.cache is None or cluster.cache.indices.get(POD_INDEX) is not indices[POD_INDEX]:
            cluster.cache = WatchCache({i: indices[i] for i in INDEXES})
    return cluster


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    prefix = GROUP
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.WARNING      # our own Events describe transitions
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    # the API server sends only our own pods and children: the rest of a namespace never reaches the operator
    for resource in [("", "v1", "pods"), *_CHILD_RESOURCES.values()]:
        settings.watching.label_selectors[resource] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


def _reconcile(kind: str, namespace: str, name: str, raise_waits: bool, indices: dict[str, Any]) -> None:
    """`raise_waits` False (the timer): a reconcile of this object already waiting makes this one redundant."""
    try:
        plan = reconcile_object(_cluster(indices), kind, namespace, name, CONFIG["settings"],
                                coalesce=not raise_waits)
    except RetryLater as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from err
    if plan is None or not raise_waits:
        return
    if plan.invalid:
        raise kopf.PermanentError(plan.invalid)
    if plan.waiting:
        raise kopf.TemporaryError(plan.waiting, delay=plan.requeue_after or 10)


def _register(registry: kopf.OperatorRegistry, kind: str, plural: str, resync: float) -> None:
    def on_change(name: str, namespace: str, **kwargs: Any) -> None:
        _reconcile(kind, namespace, name, raise_waits=True, indices=kwargs)

    def on_timer(name: str, namespace: str, **kwargs: Any) -> None:
        _reconcile(kind, namespace, name, raise_waits=False, indices=kwargs)

    def on_delete(body: kopf.Body, retry: int, **_: Any) -> None:
        _delete_children(kind, dict(body), retry)

    resource, r = (GROUP, VERSION, plural), registry
    kopf.on.resume(*resource, id=f"{plural}-resume", registry=r)(on_change)
    kopf.on.create(*resource, id=f"{plural}-create", registry=r)(on_change)
    kopf.on.update(*resource, field="spec", id=f"{plural}-update", registry=r)(on_change)
    kopf.on.delete(*resource, id=f"{plural}-delete", registry=r)(on_delete)
    kopf.timer(*resource, id=f"{plural}-resync", interval=resync, initial_delay=resync, registry=r)(on_timer)


# A deletion's clean-up is tried this many times; then the finalizer goes anyway (the children carry owner
# references, so a garbage collector still removes them): `kubectl delete` never hangs on our finalizer.
DELETE_TRIES = 5


def _delete_children(kind: str, body: dict[str, Any], retry: int) -> None:
    meta = body["metadata"]
    if name_problem(kind, meta["name"]) is not None:      # no child could be created under this name
        return
    try:
        removed = _cluster().delete_children(body)
    except Exception as err:  # noqa: BLE001 - any failure: retry a few times, never block the deletion
        if isinstance(err, ApiException) and err.status in (400, 403, 422) or retry + 1 >= DELETE_TRIES:
            log.warning("%s %s/%s: children not deleted (%s); left to the garbage collector", kind,
                        meta.get("namespace"), meta["name"], err)
            return
        raise kopf.TemporaryError(f"deleting the children failed ({err}); retrying", delay=2 ** retry) from err
    log.info("%s %s/%s deleted with %d children", kind, meta.get("namespace"), meta["name"], removed)


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator (with `settings`: images, resync interval) and, with
    `settings.watch_cache`, the indices that feed the watch cache."""
    CONFIG["settings"] = settings
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)      # in-cluster config, else the kubeconfig
    kopf.on.startup(registry=registry)(configure)
    for kind in KINDS:
        _register(registry, kind.kind, kind.plural, settings.resync_seconds)
    kopf.on.event("", "v1", "pods", labels=_OURS, registry=registry)(pod_changed)
    if settings.watch_cache:
        kopf.index("", "v1", "pods", labels=_OURS, id=POD_INDEX, registry=registry)(_index_child)
        for kind, resource in _CHILD_RESOURCES.items():
            kopf.index(*resource, labels=_OURS, id=CHILD_INDEXES[kind], registry=registry)(_index_child)
        for kind in KINDS:
            kopf.index(GROUP, VERSION, kind.plural, id=RESOURCE_INDEXES[kind.kind], registry=registry)(_index_resource)
    return registry


async def _index_child(body: kopf.Body, **_: Any) -> Any:
    return child_entry(body)


async def _index_resource(body: kopf.Body, **_: Any) -> Any:
    return resource_entry(body)


def pod_changed(labels: kopf.Labels, namespace: str, type: str | None, **kwargs: Any) -> None:
    """A child pod moved: reconcile its owner (progress, failures, completion) right away; a burst of
    events whose reconcile already waits costs that one reconcile."""
    kind = _KIND_BY_LABEL.get(labels.get(LABEL_KIND, ""))
    owner = labels.get(LABEL_OWNER)
    if kind is None or owner is None or type is None:       # type None: the initial listing
        return
    try:
        reconcile_object(_cluster(kwargs), kind, namespace, owner, CONFIG["settings"], coalesce=True)
    except Exception as err:                                  # never crash the watch stream
        log.warning("reconcile of %s %s/%s after a pod event failed: %s", kind, namespace, owner, err)
