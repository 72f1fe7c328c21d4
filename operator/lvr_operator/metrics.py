"""The operator's Prometheus metrics (prometheus_client), served by `lvr operator run --metrics-port`.

    lvr_operator_reconciles_total{kind, result}     reconciles by outcome: ok, waiting, invalid, failed, error
    lvr_operator_reconcile_seconds{kind}            read + compute + write of one object (histogram)
    lvr_operator_resources{kind, phase}             custom resources the operator has seen, by phase
    lvr_operator_api_errors_total{method, code}     Kubernetes API calls answered with an error
    lvr_operator_admission_waits_total{kind}        reconciles of a gang that found too few free GPUs

One registry of our own (not the process-global default), so tests read exactly these series.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
RECONCILES = Counter("lvr_operator_reconciles", "Reconciles by kind and outcome", ["kind", "result"],
                     registry=REGISTRY)
RECONCILE_SECONDS = Histogram("lvr_operator_reconcile_seconds", "Seconds per reconcile (read, compute, write)",
                              ["kind"], registry=REGISTRY,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
RESOURCES = Gauge("lvr_operator_resources", "Custom resources by kind and phase", ["kind", "phase"],
                  registry=REGISTRY)
API_ERRORS = Counter("lvr_operator_api_errors", "Kubernetes API calls answered with an error", ["method", "code"],
                     registry=REGISTRY)
ADMISSION_WAITS = Counter("lvr_operator_admission_waits", "Gang reconciles that found too few free GPUs",
                          ["kind"], registry=REGISTRY)

_phases: dict[tuple[str, str, str], str] = {}
_lock = threading.Lock()


def outcome(plan) -> str:
    """invalid (the spec cannot work), failed (the resource failed), waiting (on something outside the
    operator: GPUs, a dependency, a backoff), else ok."""
    if plan.invalid:
        return "invalid"
    if (plan.status or {}).get("phase") == "Failed":
        return "failed"
    return "waiting" if plan.waiting else "ok"


def record_reconcile(kind: str, namespace: str, name: str, seconds: float, result: str, phase: str | None) -> None:
    RECONCILES.labels(kind, result).inc()
    RECONCILE_SECONDS.labels(kind).observe(seconds)
    if phase:
        _set_phase((kind, namespace, name), phase)


def forget(kind: str, namespace: str, name: str) -> None:
    """A deleted resource leaves the phase gauge."""
    _set_phase((kind, namespace, name), None)


def _set_phase(key: tuple[str, str, str], phase: str | None) -> None:
    with _lock:
        old = _phases.pop(key, None) if phase is None else _phases.get(key)
        if old == phase:
            return
        if old is not None:
            RESOURCES.labels(key[0], old).dec()
        if phase is not None:
            _phases[key] = phase
            RESOURCES.labels(key[0], phase).inc()


def count_api_errors(api_client) -> None:
    """Wrap the Kubernetes client's one request path so that every error answer is counted."""
    from kubernetes.client.rest import ApiException

    call = api_client.call_api

    def counted(resource_path, method, *args, **kwargs):
        try:
            return call(resource_path, method, *args, **kwargs)
        except ApiException as err:
            API_ERRORS.labels(str(method), str(err.status)).inc()
            raise
    api_client.call_api = counted


def serve(port: int) -> None:
    start_http_server(port, registry=REGISTRY)

