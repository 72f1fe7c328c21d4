"""kopf handlers: small, typed, and all alike — they call `service.reconcile_object` and translate
its Plan: a wait raises TemporaryError(delay), an unusable spec PermanentError (after the InvalidSpec
condition is written). Pod events re-reconcile the owning custom resource.

`runner.run_operator` calls `register_all(settings)` before kopf starts.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from lvr_operator import metrics
from lvr_operator.api.common import GROUP, VERSION
from lvr_operator.api.kinds import KINDS
from lvr_operator.cluster import Cluster, RetryLater
from lvr_operator.manifests.common import LABEL_KIND, LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY, name_problem
from lvr_operator.service import reconcile_object
from lvr_operator.settings import OperatorSettings

log = logging.getLogger("lvr_operator")
CONFIG: dict[str, Any] = {"settings": OperatorSettings(), "cluster": None}
_KIND_BY_LABEL = {k.kind.lower(): k.kind for k in KINDS}


def _cluster() -> Cluster:
    if CONFIG["cluster"] is None:
        CONFIG["cluster"] = Cluster()
        metrics.count_api_errors(CONFIG["cluster"].api)
    return CONFIG["cluster"]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    prefix = GROUP
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.WARNING      # our own Events describe transitions
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300


def _reconcile(kind: str, namespace: str, name: str, raise_waits: bool) -> None:
    try:
        plan = reconcile_object(_cluster(), kind, namespace, name, CONFIG["settings"])
    except RetryLater as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from err
    if plan is None or not raise_waits:
        return
    if plan.invalid:
        raise kopf.PermanentError(plan.invalid)
    if plan.waiting:
        raise kopf.TemporaryError(plan.waiting, delay=plan.requeue_after or 10)


def _register(kind: str, plural: str) -> None:
    def on_change(name: str, namespace: str, **_: Any) -> None:
        _reconcile(kind, namespace, name, raise_waits=True)

    def on_timer(name: str, namespace: str, **_: Any) -> None:
        _reconcile(kind, namespace, name, raise_waits=False)

    def on_delete(body: kopf.Body, retry: int, **_: Any) -> None:
        _delete_children(kind, dict(body), retry)

    resource = (GROUP, VERSION, plural)
    kopf.on.resume(*resource, id=f"{plural}-resume")(on_change)
    kopf.on.create(*resource, id=f"{plural}-create")(on_change)
    kopf.on.update(*resource, field="spec", id=f"{plural}-update")(on_change)
    kopf.on.delete(*resource, id=f"{plural}-delete")(on_delete)
    kopf.timer(*resource, id=f"{plural}-resync", interval=CONFIG["settings"].resync_seconds,
               initial_delay=CONFIG["settings"].resync_seconds)(on_timer)


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


def register_all(settings: OperatorSettings) -> None:
    """Register the handlers of every kind (once), with `settings` (images, resync interval)."""
    CONFIG["settings"] = settings
    if not CONFIG.get("registered"):
        for kind in KINDS:
            _register(kind.kind, kind.plural)
        CONFIG["registered"] = True


@kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY})
def pod_changed(labels: kopf.Labels, namespace: str, type: str | None, **_: Any) -> None:
    """A child pod moved: reconcile its owner (progress, failures, completion) right away."""
    kind = _KIND_BY_LABEL.get(labels.get(LABEL_KIND, ""))
    owner = labels.get(LABEL_OWNER)
    if kind is None or owner is None or type is None:       # type None: the initial listing
        return
    try:
        reconcile_object(_cluster(), kind, namespace, owner, CONFIG["settings"])
    except Exception as err:                                  # never crash the watch stream
        log.warning("reconcile of %s %s/%s after a pod event failed: %s", kind, namespace, owner, err)
