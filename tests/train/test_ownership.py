"""An output directory belongs to the first job that runs there: another job pointed at it is refused (before it
resumes from or prunes the owner's checkpoints), the owner itself resumes; on local paths and on S3."""

from __future__ import annotations

import pytest

from lvr_trainer.train.ownership import OUTPUT_IN_USE_MARK, OutputInUse, claim_output, job_identity


def test_the_first_job_owns_the_output_and_another_is_refused(tmp_path):
    out = str(tmp_path / "runs" / "rl")
    assert claim_output(out, "RLJob/team/a") is True
    assert claim_output(out, "RLJob/team/a") is False            # the same job again: a restart resumes
    with pytest.raises(OutputInUse, match=f"{OUTPUT_IN_USE_MARK}: output .* belongs to 'RLJob/team/a', not "
                                          "'SFTJob/team/a'"):
        claim_output(out, "SFTJob/team/a")
    assert job_identity({"LVR_JOB": "team/a", "LVR_JOB_KIND": "RLJob"}) == "RLJob/team/a"
    assert job_identity({}) is None                              # outside the operator: nothing is claimed


def test_ownership_on_s3(s3_server, monkeypatch):
    import uuid

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    out = f"s3://{s3_server.bucket}/own-{uuid.uuid4().hex[:8]}/rl"
    assert claim_output(out, "RLJob/team/a") is True
    assert claim_output(out, "RLJob/team/a") is False
    with pytest.raises(OutputInUse, match="belongs to 'RLJob/team/a'"):
        claim_output(out, "RLJob/team/b")


def test_lvr_refuses_a_used_output_with_the_mark_the_operator_reads(tmp_path, monkeypatch, tiny_data, make_config):
    import yaml

    from lvr_trainer.cli import main

    cfg = make_config()
    claim_output(cfg.output.dir, "SFTJob/team/first")
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    log = tmp_path / "termination-log"
    monkeypatch.setenv("LVR_TERMINATION_LOG", str(log))
    monkeypatch.setenv("LVR_JOB", "team/second")
    monkeypatch.setenv("LVR_JOB_KIND", "SFTJob")
    assert main(["sft", "--config", str(path)]) == 2
    assert log.read_text().startswith(OUTPUT_IN_USE_MARK)
