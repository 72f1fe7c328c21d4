"""Who writes under an output directory: the first job to run there leaves `.lvr-owner` (its kind, namespace
and name), and any other job pointed at the same directory is refused before it resumes from, or prunes, the
checkpoints it would otherwise share. The same job started again (a restart, a preemption, the resource
deleted and applied again) is the owner and resumes. Runs outside the operator (no LVR_JOB) claim nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lvr_trainer.contracts.exits import OUTPUT_IN_USE_MARK

OWNER_FILE = ".lvr-owner"


class OutputInUse(Exception):
    """Another job owns this output directory; the message names it and what to do."""


def job_identity(env=None) -> str | None:
    """`RLJob/ns/name` from the operator's LVR_JOB_KIND and LVR_JOB, or None outside the operator."""
    env = os.environ if env is None else env
    job, kind = env.get("LVR_JOB"), env.get("LVR_JOB_KIND")
    return f"{kind}/{job}" if job and kind else None


def claim_output(uri: str, job: str) -> bool:
    """Make `job` the owner of the output `uri` (a directory or s3:// prefix), or raise OutputInUse when another
    job owns it. Returns True when this call wrote the marker."""
    owner = _read(uri)
    if owner is not None:
        if owner.get("job") != job:
            raise OutputInUse(
                f"{OUTPUT_IN_USE_MARK}: output {uri} belongs to {owner.get('job')!r}, not {job!r}: its checkpoints "
                "would be resumed from and pruned by both jobs. Give this job its own output.uri, or delete the "
                f"other job's output (and {uri}/{OWNER_FILE}) if it is no longer wanted")
        return False
    _write(uri, {"job": job})
    return True


def _read(uri: str) -> dict | None:
    if uri.startswith("s3://"):
        store, name = _object(uri)
        with tempfile.TemporaryDirectory() as tmp:
            if not store.download_object(name, Path(tmp) / OWNER_FILE):
                return None
            return json.loads((Path(tmp) / OWNER_FILE).read_text())
    path = Path(uri) / OWNER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write(uri: str, owner: dict) -> None:
    text = json.dumps(owner)
    if uri.startswith("s3://"):
        store, name = _object(uri)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / OWNER_FILE).write_text(text)
            store.upload_file(name, Path(tmp) / OWNER_FILE, content_type="application/json")
        return
    Path(uri).mkdir(parents=True, exist_ok=True)
    partial = Path(uri) / f"{OWNER_FILE}.partial"
    partial.write_text(text)
    partial.replace(Path(uri) / OWNER_FILE)


def _object(uri: str):
    from lvr_trainer.storage.s3 import S3Store

    store = S3Store.from_uri(uri, timeout_s=60.0, suffix="")
    return store, f"{store.prefix}/{OWNER_FILE}" if store.prefix else OWNER_FILE
