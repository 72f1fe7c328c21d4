"""Entry for `kopf run -m lvr_operator.main` (tests, KopfRunner), with settings from the environment
(LVR_TRAINER_IMAGE, LVR_ROLLOUT_IMAGE, LVR_RESYNC_SECONDS, LVR_WATCH_CACHE).

kopf's command line runs its default registry, so this module lends the operator's own registry to it for
one run: once kopf has taken the registry (its startup), the previous default is put back and this module
is forgotten, so the next `kopf run` in the same process (another operator, or this one again with a fresh
registry) never meets these handlers.
"""

import sys
from typing import Any

import kopf

from lvr_operator.handlers import build_registry
from lvr_operator.settings import OperatorSettings

_previous = kopf.get_default_registry()
registry = build_registry(OperatorSettings.from_env())


@kopf.on.startup(registry=registry)
def _give_back_the_default_registry(**_: Any) -> None:
    kopf.set_default_registry(_previous)
    sys.modules.pop(__name__, None)


kopf.set_default_registry(registry)
