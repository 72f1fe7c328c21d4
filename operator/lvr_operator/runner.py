"""Start the operator: `lvr operator run` or `python -m lvr_operator`."""

from __future__ import annotations

import logging

from lvr_operator.settings import OperatorSettings


def kopf_run_kwargs(namespaces: list[str] | None, liveness: str | None, peering: str | None) -> dict:
    """kopf.run's arguments. Pure, so the flags the chart passes are unit-tested.

    Peering: with a name, kopf joins that peering object (mandatory: a missing one is an error, not a
    silent standalone run), and a second operator with the same priority makes both pause, so two
    replicas never act at once. Without a name it runs standalone (tests, a laptop)."""
    kwargs: dict = {"clusterwide": not namespaces, "namespaces": list(namespaces or []),
                    "liveness_endpoint": liveness}
    if peering:
        kwargs["peering_name"] = peering
        kwargs["standalone"] = False
    else:
        kwargs["standalone"] = True
    return kwargs


def run_operator(settings: OperatorSettings, namespaces: list[str] | None = None, verbose: bool = False,
                 liveness: str | None = None, peering: str | None = None, metrics_port: int | None = None) -> int:
    import kopf

    from lvr_operator import handlers, metrics

    if metrics_port:
        metrics.serve(metrics_port)

    registry = handlers.build_registry(settings)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf_settings = kopf.OperatorSettings()
    # No runtime watching of CRDs and Namespaces: the CRDs exist before the operator starts (the chart
    # installs them first) and --namespace names are exact, so the least-privilege RBAC of
    # manifests/rbac.py needs no access to either. CRDs created later are served after a restart.
    kopf_settings.scanning.disabled = True
    kopf.run(registry=registry, settings=kopf_settings, **kopf_run_kwargs(namespaces, liveness, peering))
    return 0
