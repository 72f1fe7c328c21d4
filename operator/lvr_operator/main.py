"""Entry for `kopf run -m lvr_operator.main` (tests, KopfRunner): registers the handlers with settings
from the environment (LVR_TRAINER_IMAGE, LVR_VLLM_IMAGE, LVR_RESYNC_SECONDS)."""

from lvr_operator.handlers import register_all
from lvr_operator.settings import OperatorSettings

register_all(OperatorSettings.from_env())
