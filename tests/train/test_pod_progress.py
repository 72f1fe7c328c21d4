"""The trainer's progress annotation: what it says, when it is sent, and that failures never stop training."""

from __future__ import annotations

import json

from lvr_trainer.train.pod_progress import PodProgressReporter, progress_payload
from lvr_trainer.train.sft import run_sft


def test_payload_names_step_total_metrics_and_checkpoint():
    p = progress_payload(7, 10, {"train/loss": 0.5, "reward/total": 0.25, "rollout/accuracy": 0.5,
                                 "val/accuracy": 0.75}, "s3://b/run/checkpoints/step-000007")
    assert p["step"] == 7 and p["total_steps"] == 10 and p["loss"] == 0.5 and p["reward"] == 0.25
    assert p["accuracy"] == 0.75  # held-out accuracy preferred over rollout accuracy
    assert p["last_checkpoint"].endswith("step-000007") and p["updated_at"].endswith("Z")


def test_reports_are_throttled_but_the_last_step_always_goes():
    sent = []
    r = PodProgressReporter(10, sent.append, every_s=3600)
    for step in range(1, 11):
        r.report(step, {"train/loss": 1.0 / step})
    assert [p["step"] for p in sent] == [1, 10]


class FakeClock:
    """Monotonic seconds that only move when told: a machine booted `now` seconds ago."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_first_report_goes_even_right_after_boot():
    sent, clock = [], FakeClock(5.0)  # monotonic() counts from boot: 5 s is less than every_s
    r = PodProgressReporter(10, sent.append, every_s=60, clock=clock)
    r.report(1, {"train/loss": 1.0})
    assert [p["step"] for p in sent] == [1]
    clock.now += 59
    r.report(2, {})                     # within every_s of the first: throttled
    clock.now += 1
    r.report(3, {})                     # every_s later: sent
    r.report(4, {}, force=True)         # forced (a checkpoint): sent regardless
    assert [p["step"] for p in sent] == [1, 3, 4]


def test_a_failing_patch_is_reported_once_and_never_raises(capsys):
    def broken(_):
        raise RuntimeError("403 Forbidden")
    r = PodProgressReporter(3, broken, every_s=0)
    for step in (1, 2, 3):
        r.report(step, {})
    assert capsys.readouterr().err.count("403 Forbidden") == 1


def test_no_pod_environment_means_no_reporter():
    assert PodProgressReporter.from_env(5, env={}) is None


def test_sft_run_reports_final_step_and_checkpoint(make_config, monkeypatch):
    sent = []
    monkeypatch.setattr(PodProgressReporter, "from_env", classmethod(lambda cls, total, env=None: cls(total, sent.append)))
    cfg = make_config(train={"steps": 3})
    run_sft(cfg)
    last = sent[-1]
    assert last["step"] == 3 and last["total_steps"] == 3 and "loss" in last
    assert last["last_checkpoint"] == f"{cfg.output.dir}/checkpoints/step-000003"
    json.dumps(last)


def test_a_nan_loss_is_left_out_and_the_annotation_is_strict_json():
    p = progress_payload(3, 10, {"train/loss": float("nan"), "reward/total": float("inf"), "val/accuracy": 1},
                         "s3://b/run/checkpoints/step-000003")
    assert "loss" not in p and "reward" not in p and p["accuracy"] == 1.0 and p["step"] == 3
    json.dumps(p, allow_nan=False)


def test_the_wire_is_read_back_with_non_finite_wrong_and_oversized_values_counted():
    from lvr_trainer.contracts.progress import MAX_REPORT_CHARS, parse_report

    report, dropped = parse_report('{"step": 4, "total_steps": 8, "loss": NaN, "reward": -Infinity, '
                                   '"accuracy": "high", "last_checkpoint": "s3://b/c/step-4"} trailing log')
    assert dropped == 3 and report.status_fields() == {"step": 4, "totalSteps": 8,
                                                       "lastCheckpoint": "s3://b/c/step-4"}
    assert parse_report(json.dumps({"step": 1, "last_checkpoint": "x" * MAX_REPORT_CHARS})) == (None, 1)
    assert parse_report("not json") == (None, 1) and parse_report(None) == (None, 0)
    assert parse_report('{"step": 2, "loss": 1}')[0].loss == 1.0     # an integral number is a float
