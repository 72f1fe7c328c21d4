"""Start the operator: `lvr operator run` or `python -m lvr_operator`."""

from __future__ import annotations

import logging

from lvr_operator.settings import OperatorSettings


def run_operator(settings: OperatorSettings, namespaces: list[str] | None = None, verbose: bool = False) -> int:
    import kopf

    from lvr_operator import handlers

    handlers.register_all(settings)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces or [])
    return 0
