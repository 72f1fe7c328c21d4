"""A one-handler kopf operator, to show that `kopf_operator` runs operators against the local cluster."""

from typing import Any

import kopf


@kopf.on.create("configmaps", labels={"lvr-test": "kopf"})
def mark_seen(patch: kopf.Patch, **_: Any) -> None:
    patch.metadata.annotations["lvr.dev/seen-by"] = "toy-operator"
