"""Checkpoints at scale, against a real S3 server and real gloo process groups: every node pulls what it
resumes from; an s3:// model is downloaded once per node and its weights read by rank 0 alone; uploads
run in the background, are retried and, when they finally fail, stop the run with the reason; only
`train.keep_last` checkpoints are kept, locally and in S3; process-group timeouts come from the config
and name it when they fire."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch

from lvr_trainer.storage.s3 import S3Store
from lvr_trainer.train import checkpoint_upload as upload
from lvr_trainer.train.checkpoint import save_model_dir, stale_checkpoints
from lvr_trainer.train.checkpoint_save import checkpoint_metrics
from lvr_trainer.train.checkpoint_upload import CheckpointUploader, CheckpointUploadError, local_output_dir
from lvr_trainer.train.sft import run_sft
from lvr_trainer.model.loading import load_policy

from .conftest import tiny_config
from .test_precision import BF16_LOSS_RTOL

WORKER = Path(__file__).with_name("scale_worker.py")


@pytest.fixture()
def s3(s3_server, monkeypatch, tmp_path):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LVR_STAGING_DIR", str(tmp_path / "staging"))
    return s3_server


def _names(s3_server, prefix: str) -> set[str]:
    store = S3Store.from_uri(f"s3://{s3_server.bucket}/{prefix}", suffix="", env=s3_server.env())
    return {name[len(store.prefix) + 1:] for name, _ in store.list_objects()}


def _checkpoint_names(s3_server, prefix: str) -> set[str]:
    return {n.split("/")[1] for n in _names(s3_server, prefix) if n.startswith("checkpoints/step-")}


def test_stale_checkpoints_keep_the_newest_and_never_latest():
    names = ["step-000010", "step-000002", "step-000003", "latest", "step-000004.tmp", "step-000001"]
    assert stale_checkpoints(names, "step-000010", 2) == ["step-000001", "step-000002"]
    # a resumed run whose `latest` is older than leftovers of a crashed run keeps it anyway
    assert stale_checkpoints(names, "step-000001", 1) == ["step-000002", "step-000003"]
    assert stale_checkpoints(names, "step-000010", None) == []


def test_local_checkpoints_beyond_keep_last_are_deleted(make_config):
    cfg = make_config(train={"steps": 4, "save_every": 1, "keep_last": 2})
    summary = run_sft(cfg)
    root = Path(cfg.output.dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000003", "step-000004"]
    assert Path(summary["checkpoint"]).name == "step-000004"


def test_s3_checkpoints_are_uploaded_in_the_background_and_pruned(make_config, s3):
    prefix = f"runs/keep-{uuid.uuid4().hex[:6]}"
    cfg = make_config(train={"steps": 3, "save_every": 1, "keep_last": 2},
                      output={"dir": f"s3://{s3.bucket}/{prefix}"})
    run_sft(cfg)        # the last step's save waits for its upload
    assert _checkpoint_names(s3, prefix) == {"step-000002", "step-000003"}
    assert "checkpoints/step-000003/trainer_state.pt" in _names(s3, prefix)
    local = local_output_dir(cfg.output.dir) / "checkpoints"
    assert sorted(p.name for p in local.iterdir()) == ["latest", "step-000002", "step-000003"]
    metrics = checkpoint_metrics(local_output_dir(cfg.output.dir))
    assert metrics["checkpoint/uploads"] == 3 and metrics["checkpoint/upload_failures"] == 0


def _staged_checkpoint(make_config, s3, prefix: str) -> tuple[str, Path]:
    """A one-step run's checkpoint in staging (not uploaded: a local output), for the uploader tests."""
    cfg = make_config(train={"steps": 1})
    run_sft(cfg)
    return f"s3://{s3.bucket}/{prefix}", Path(cfg.output.dir)


def test_upload_runs_while_training_goes_on(make_config, s3, monkeypatch):
    uri, local = _staged_checkpoint(make_config, s3, f"runs/bg-{uuid.uuid4().hex[:6]}")
    release, real_put = threading.Event(), upload._put_once

    def slow_put(*args):
        release.wait(timeout=60)
        real_put(*args)
    monkeypatch.setattr(upload, "_put_once", slow_put)
    uploader = CheckpointUploader(uri, local, keep_last=None)
    uploader.start(1)                       # returns at once: the thread waits on the store
    assert uploader._thread.is_alive() and uploader.stats.uploads == 0
    release.set()
    uploader.wait()
    assert uploader.stats.uploads == 1


def test_upload_is_retried_through_an_outage(make_config, s3, monkeypatch, capfd):
    uri, local = _staged_checkpoint(make_config, s3, f"runs/retry-{uuid.uuid4().hex[:6]}")
    with socket.socket() as sock:           # a port with nothing listening: connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("LVR_S3_ENDPOINT", dead)
    waits = []

    def server_back(seconds):               # the outage ends during the first backoff
        waits.append(seconds)
        os.environ["LVR_S3_ENDPOINT"] = s3.url
    uploader = CheckpointUploader(uri, local, keep_last=None, backoff_s=0.5, sleep=server_back)
    uploader.start(1)
    uploader.wait()
    assert uploader.stats.uploads == 1 and uploader.stats.retries == 1 and 0.25 <= waits[0] <= 0.75
    assert "checkpoints/latest" in _names(s3, uri.split("/", 3)[3])
    assert "try 2 of 5" in capfd.readouterr().err


def test_a_checkpoint_that_cannot_be_uploaded_stops_the_run_with_the_reason(make_config, s3, monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_BACKOFF_S", 0.01)
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/run"
    cfg = make_config(train={"steps": 3, "save_every": 1}, output={"dir": uri})
    with pytest.raises(CheckpointUploadError) as info:
        run_sft(cfg)
    msg = str(info.value)
    for part in ("step-000001", "could not be uploaded", uri, "NoSuchBucket", "--resume", "5 attempts"):
        assert part in msg, msg
    metrics = checkpoint_metrics(local_output_dir(uri))
    assert metrics["checkpoint/upload_failures"] == 1 and metrics["checkpoint/upload_retries"] == 4


# --- several processes (gloo) -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], nodes: int, per_node: int, envs: list[dict], timeout: int = 600) -> None:
    """`nodes` torchrun launches of `per_node` processes each on 127.0.0.1 (static rendezvous), each
    launch with its own environment (its node's HOME and staging directory)."""
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={per_node}",
         f"--node_rank={n}", "--master_addr=127.0.0.1", f"--master_port={port}", str(WORKER), *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", **envs[n]}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for n in range(nodes)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]


def _ranks(out: Path, world: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _model_in_s3(s3, tmp_path, make_config) -> str:
    """The tiny preset saved as a model directory and uploaded to S3; its s3:// URI."""
    model, tok, proc = load_policy(make_config().model, torch.device("cpu"))
    local = tmp_path / "tiny-model"
    save_model_dir(model, tok, proc, local)
    prefix = f"models/tiny-{uuid.uuid4().hex[:6]}"
    store = S3Store.from_uri(f"s3://{s3.bucket}/{prefix}", suffix="", env=s3.env())
    for path in local.rglob("*"):
        if path.is_file():
            store.upload_file(f"{prefix}/{path.relative_to(local).as_posix()}", path)
    return f"s3://{s3.bucket}/{prefix}"


@pytest.mark.distributed
def test_fsdp_bf16_mixed_from_an_s3_model_downloads_once_per_node_and_reads_on_rank_0(
        tmp_path, tiny_data, make_config, s3):
    """2 ranks on one node, FSDP, bf16-mixed, model.path s3://, output s3://, lr 1e-6: the node's first
    rank downloads the model while the other waits; only global rank 0 reads the weights (the other
    builds a meta skeleton and receives its shard); the losses match a one-process fp32 run on the same
    global batch; weights move at lr 1e-6; one checkpoint is left (keep_last 1) locally and in S3."""
    model_uri = _model_in_s3(s3, tmp_path, make_config)
    prefix = f"runs/fsdp-{uuid.uuid4().hex[:6]}"
    sections = dict(model={"preset": None, "path": model_uri}, optim={"lr": 1e-6, "warmup_steps": 0},
                    output={"dir": f"s3://{s3.bucket}/{prefix}"})
    cfg = tiny_config(tiny_data, tmp_path, **sections,
                      train={"steps": 2, "batch_size": 2, "save_every": 1, "keep_last": 1, "bf16": None,
                             "precision": "bf16-mixed"}, parallel={"strategy": "fsdp"})
    config = tmp_path / "fsdp.json"
    config.write_text(cfg.model_dump_json())
    out = tmp_path / "ranks"
    out.mkdir()
    _torchrun(["run", "--out", str(out), "--config", str(config)], nodes=1, per_node=2,
              envs=[{"HOME": str(tmp_path / "node0"), "LVR_STAGING_DIR": str(tmp_path / "node0-staging")}])
    ranks = _ranks(out, 2)
    assert len(ranks[0]["downloads"]) == 1 and ranks[0]["downloads"][0] > 0     # the model, once
    assert ranks[1]["downloads"] == []
    assert [r["weight_reads"] for r in ranks] == [1, 0]
    reference = run_sft(tiny_config(tiny_data, tmp_path / "one", optim=sections["optim"],
                                    model={"preset": None, "path": str(tmp_path / "tiny-model")},
                                    train={"steps": 2, "batch_size": 4, "bf16": None, "precision": "fp32"}))
    rel = [abs(a - b) / a for a, b in zip(reference["losses"], ranks[0]["losses"])]
    assert max(rel) < BF16_LOSS_RTOL, (reference["losses"], ranks[0]["losses"])
    assert _checkpoint_names(s3, prefix) == {"step-000002"}
    staged = tmp_path / "node0-staging" / s3.bucket / prefix / "checkpoints"
    assert sorted(p.name for p in staged.iterdir()) == ["latest", "step-000002"]
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    exported = load_file(str(staged / "step-000002/model/model.safetensors"))     # for users: bf16
    assert exported["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert {"step-000002/state/.metadata", "step-000002/state/__0_0.distcp", "step-000002/state/__1_0.distcp"} <= {
        n.removeprefix("checkpoints/") for n in _names(s3, prefix)}                  # both ranks' shards in S3
    dcp_to_torch_save(str(staged / "step-000002/state"), str(tmp_path / "masters.pt"))
    masters = torch.load(str(tmp_path / "masters.pt"), weights_only=False)["model"]  # fp32 master weights
    initial = load_file(str(tmp_path / "tiny-model/model.safetensors"))
    final = masters["model.language_model.layers.0.mlp.down_proj.weight"]
    assert final.dtype == torch.float32
    assert (final != initial["model.layers.0.mlp.down_proj.weight"]).float().mean() > 0.5


@pytest.mark.distributed
def test_every_node_pulls_the_checkpoint_it_resumes_from(tmp_path, tiny_data, s3):
    """Two nodes (two torchrun launches, LOCAL_RANK 0 each, separate staging disks) resume an s3:// run:
    both start at the checkpoint's step (before, the second node had no checkpoint and started over)."""
    prefix = f"runs/nodes-{uuid.uuid4().hex[:6]}"
    output = {"dir": f"s3://{s3.bucket}/{prefix}", "tensorboard": False}
    run_sft(tiny_config(tiny_data, tmp_path, train={"steps": 2, "batch_size": 4}, output=output))
    # a bounded wait: a node that started over (the defect) fails in 2 minutes, not torch's 30
    cfg = tiny_config(tiny_data, tmp_path, train={"steps": 3, "batch_size": 2}, output=output,
                      parallel={"timeout_s": 120})
    config = tmp_path / "resume.json"
    config.write_text(cfg.model_dump_json())
    out = tmp_path / "ranks"
    out.mkdir()
    envs = [{"HOME": str(tmp_path / f"node{n}"), "LVR_STAGING_DIR": str(tmp_path / f"node{n}-staging")}
            for n in range(2)]
    _torchrun(["run", "--out", str(out), "--config", str(config), "--resume"], nodes=2, per_node=1, envs=envs)
    ranks = _ranks(out, 2)
    assert [(r["local_rank"], r["start_step"], r["steps"]) for r in ranks] == [(0, 2, 3), (0, 2, 3)]
    for n in range(2):
        pulled = tmp_path / f"node{n}-staging" / s3.bucket / prefix / "checkpoints" / "step-000002"
        assert (pulled / "trainer_state.pt").is_file() and (pulled / "model" / "config.json").is_file()
    assert _checkpoint_names(s3, prefix) >= {"step-000002", "step-000003"}


@pytest.mark.distributed
def test_a_collective_timeout_comes_from_the_config_and_names_it(tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    _torchrun(["timeout", "--out", str(out)], nodes=1, per_node=2, envs=[{}], timeout=120)
    rank0 = _ranks(out, 2)[0]
    for group in ("world", "dp"):       # the DP group is a subgroup: it gets the setting too
        assert rank0[group]["error"] is not None, rank0
        assert "parallel.timeout_s (2 s)" in rank0[group]["error"]
        assert rank0[group]["seconds"] < 10          # not torch's 30-minute gloo default


def test_sharded_checkpoint_of_two_nodes_is_marked_latest_only_after_both_uploaded(tmp_path, s3, monkeypatch):
    """FSDP on 2 nodes with node-local staging: node 1 uploads its ranks' shards and says so; node 0 uploads
    the rest and puts `latest` only after that (a marker before would name a checkpoint missing shards)."""
    import time

    monkeypatch.setattr(upload, "NODE_POLL_S", 0.05)
    uri = f"s3://{s3.bucket}/runs/two-nodes-{uuid.uuid4().hex[:6]}"
    stages = []
    for node in range(2):
        ckpt = tmp_path / f"node{node}" / "checkpoints" / "step-000004"
        (ckpt / "state").mkdir(parents=True)
        for rank in (2 * node, 2 * node + 1):
            (ckpt / "state" / f"__{rank}_0.distcp").write_bytes(bytes([rank]) * 100)
        if node == 0:
            (ckpt / "state" / ".metadata").write_bytes(b"meta")
            (ckpt / "trainer_state.pt").write_bytes(b"state")
            (ckpt.parent / "latest").write_text("step-000004")
        stages.append(tmp_path / f"node{node}")
    seen_before_node1: list[bool] = []

    def node1() -> None:
        time.sleep(0.5)
        seen_before_node1.append("checkpoints/latest" in _names(s3, uri.split("/", 3)[3]))
        upload.push_checkpoint(uri, stages[1], 4, node=upload.NodeShare(1, 2))
    thread = threading.Thread(target=node1)
    thread.start()
    sent = upload.push_checkpoint(uri, stages[0], 4, node=upload.NodeShare(0, 2))
    thread.join()
    names = _names(s3, uri.split("/", 3)[3])
    assert seen_before_node1 == [False]                      # node 0 waited for node 1
    assert {f"checkpoints/step-000004/state/__{r}_0.distcp" for r in range(4)} <= names
    assert "checkpoints/latest" in names and sent == 5       # 2 shards, metadata, trainer state, marker
    with pytest.raises(upload.StoreError, match="node 1 did not upload its shards of step-000004"):
        upload.push_checkpoint(f"{uri}-alone", stages[0], 4, node=upload.NodeShare(0, 2), wait_s=0.2)
