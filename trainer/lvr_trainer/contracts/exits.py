"""How a trainer pod says why it ended: an exit status, and a mark that starts its termination message
(`/dev/termination-log`), which the operator reads from the pod's status to set the job's reason."""

EXIT_PREEMPTED = 83            # stopped on SIGTERM after checkpointing: a preemption, not a failure
PREEMPTED_MARK = "lvr-preempted"
EXIT_DOES_NOT_FIT = 3          # `lvr plan`'s exit status, and a trainer's that refused to start beyond its plan
DOES_NOT_FIT_MARK = "lvr-does-not-fit"
OUTPUT_IN_USE_MARK = "lvr-output-in-use"    # output.uri belongs to another job (its `.lvr-owner`)
