"""The rollout server's wire format: tensors travel as safetensors bytes, everything else as JSON.

A `/generate` body is one safetensors blob holding each request's tensors (`{i}.input_ids`, ...) with
the sampling parameters and the expected weight version in its string metadata. A weight transfer is a
JSON manifest (version, and each bucket's names, shapes and dtypes) followed by one safetensors body per
bucket, written as a stream (`safetensors_chunks`: the header, then each tensor's bytes, never a second copy
of the bucket). Pure functions, no I/O: the server and the client both import them, so the two sides
cannot drift apart.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lvr_trainer.rollout.base import NamedTensors, Rollout, RolloutRequest, SamplingParams
from lvr_trainer.rollout.weights import WeightEntry, unshared_cpu

_TEXT = ("input_ids", "mm_token_type_ids")
_VIDEO = ("video_embeds", "video_grid_thw")


class WireError(ValueError):
    """A body that does not decode; the message says which part is wrong (the server answers 400)."""


def metadata_of(blob: bytes) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors blob (safetensors' own `load` drops them)."""
    if len(blob) < 8:
        raise WireError("body is not safetensors: shorter than its 8-byte header length")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8:
        raise WireError(f"body is not safetensors: header length {size} exceeds the body ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8:8 + size])
    except ValueError as e:
        raise WireError(f"body is not safetensors: header is not JSON ({e})") from None
    return dict(header.get("__metadata__") or {})


def _tensors(blob: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(blob)
    except Exception as e:  # safetensors raises its own error types for every malformed blob
        raise WireError(f"body is not safetensors: {e}") from None


def encode_generate(requests: list[RolloutRequest], params: SamplingParams, weight_version: int) -> bytes:
    """Each distinct video's embeddings travel once (requests about one video share its tensor)."""
    tensors: dict[str, torch.Tensor] = {}
    video_index: dict[int, int] = {}        # id(video_embeds) -> k, the video's tensors `v{k}.*`
    for i, r in enumerate(requests):
        for name in _TEXT:
            tensors[f"{i}.{name}"] = getattr(r, name).detach().cpu().contiguous()
        if id(r.video_embeds) not in video_index:
            video_index[id(r.video_embeds)] = k = len(video_index)
            for name in _VIDEO:
                tensors[f"v{k}.{name}"] = getattr(r, name).detach().cpu().contiguous()
        tensors[f"{i}.video"] = torch.tensor([video_index[id(r.video_embeds)]])
    meta = {"params": json.dumps(asdict(params)), "weight_version": str(weight_version),
            "requests": str(len(requests)),
            "second_per_grid_t": json.dumps([r.second_per_grid_t for r in requests])}
    return st_save(tensors, metadata=meta)


def decode_generate(blob: bytes) -> tuple[list[RolloutRequest], SamplingParams, int]:
    """(requests, params, expected weight version) from a `/generate` body; WireError names what is wrong."""
    meta, tensors = metadata_of(blob), _tensors(blob)
    missing = [k for k in ("params", "weight_version", "requests", "second_per_grid_t") if k not in meta]
    if missing:
        raise WireError(f"/generate metadata lacks {', '.join(missing)}")
    try:
        params = SamplingParams(**json.loads(meta["params"]))
        version, count = int(meta["weight_version"]), int(meta["requests"])
        seconds = json.loads(meta["second_per_grid_t"])
    except (TypeError, ValueError) as e:
        raise WireError(f"/generate metadata: {e}") from None
    if count < 1 or len(seconds) != count:
        raise WireError(f"/generate: {count} requests but {len(seconds)} second_per_grid_t values")
    requests = []
    for i in range(count):
        absent = [f"{i}.{n}" for n in (*_TEXT, "video") if f"{i}.{n}" not in tensors]
        if absent:
            raise WireError(f"/generate: request {i} lacks tensors {', '.join(absent)}")
        k = int(tensors[f"{i}.video"][0])
        if any(f"v{k}.{n}" not in tensors for n in _VIDEO):
            raise WireError(f"/generate: request {i} names video {k}, whose tensors are not in the body")
        req = RolloutRequest(*(tensors[f"{i}.{n}"] for n in _TEXT), *(tensors[f"v{k}.{n}"] for n in _VIDEO),
                             second_per_grid_t=seconds[i])
        check_request(req, i)
        requests.append(req)
    return requests, params, version


def check_request(req: RolloutRequest, index: int) -> None:
    """Shapes an engine can run; a mismatch would otherwise surface as an index error deep in a forward."""
    if req.input_ids.dim() != 1 or req.mm_token_type_ids.shape != req.input_ids.shape:
        raise WireError(f"request {index}: input_ids and mm_token_type_ids must be 1-D of one length, got "
                        f"{tuple(req.input_ids.shape)} and {tuple(req.mm_token_type_ids.shape)}")
    if req.video_grid_thw.shape != (1, 3) or req.video_embeds.dim() != 2:
        raise WireError(f"request {index}: video_grid_thw must be (1, 3) and video_embeds (N, hidden), got "
                        f"{tuple(req.video_grid_thw.shape)} and {tuple(req.video_embeds.shape)}")


def encode_rollouts(groups: list[list[Rollout]], weight_version: int) -> dict:
    return {"weight_version": weight_version, "rollouts": [[asdict(r) for r in g] for g in groups]}


def decode_rollouts(reply: dict) -> tuple[list[list[Rollout]], int]:
    return [[Rollout(**r) for r in g] for g in reply["rollouts"]], int(reply["weight_version"])


def encode_weights(named_tensors: NamedTensors, version: int) -> bytes:
    return st_save(unshared_cpu(named_tensors), metadata={"weight_version": str(version)})


def decode_weights(blob: bytes) -> tuple[dict[str, torch.Tensor], int]:
    meta = metadata_of(blob)
    if "weight_version" not in meta:
        raise WireError("/weights body lacks the `weight_version` metadata")
    try:
        return _tensors(blob), int(meta["weight_version"])
    except ValueError as e:
        raise WireError(f"/weights: weight_version {meta['weight_version']!r} is not an integer") from e


# ---- weight transfers ----

_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def dtype_of(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code ("BF16" -> torch.bfloat16)."""
    for name, c in _ST_DTYPES.items():
        if c == code:
            return getattr(torch, name)
    raise WireError(f"unknown safetensors dtype {code!r}")


def safetensors_chunks(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """A safetensors file as a stream of byte chunks (the header, then each tensor's bytes in place): what
    `safetensors.torch.save` returns, without building the whole body in memory."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    yield struct.pack("<Q", len(raw)) + raw
    for t in tensors.values():
        if t.numel():
            yield memoryview(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())


def encode_manifest(version: int, buckets: list[list[WeightEntry]]) -> dict:
    return {"weight_version": version,
            "buckets": [[[e.name, list(e.shape), e.dtype] for e in b] for b in buckets]}


def decode_manifest(spec: dict) -> tuple[int, list[list[WeightEntry]]]:
    """(version, buckets) from a transfer's JSON manifest; WireError names what is malformed."""
    try:
        version = int(spec["weight_version"])
        buckets = [[WeightEntry(str(n), tuple(int(d) for d in shape), str(dt)) for n, shape, dt in b]
                   for b in spec["buckets"]]
    except (KeyError, TypeError, ValueError) as e:
        raise WireError(f"weight manifest: expected {{weight_version, buckets: [[[name, shape, dtype], ...], ...]}}"
                        f" ({type(e).__name__}: {e})") from None
    if not buckets or any(not b for b in buckets):
        raise WireError("weight manifest: no buckets, or an empty bucket")
    bad = sorted({e.dtype for b in buckets for e in b} - set(_ST_DTYPES))
    if bad:
        raise WireError(f"weight manifest: unknown dtype(s) {bad}")
    return version, buckets


def check_bucket_header(header: dict, bucket: list[WeightEntry], index: int) -> None:
    """A received bucket file's header must hold exactly the manifest's tensors, shapes and dtypes, laid
    out without gaps: checked before the bucket is accepted, so a commit never meets a torn file."""
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    want = {e.name: e for e in bucket}
    if set(tensors) != set(want):
        raise WireError(f"bucket {index}: tensors {sorted(set(tensors) ^ set(want))[:5]} differ from the manifest")
    for name, info in tensors.items():
        e = want[name]
        if list(info.get("shape", ())) != list(e.shape) or info.get("dtype") != _ST_DTYPES[e.dtype]:
            raise WireError(f"bucket {index}: {name} is {info.get('dtype')} {info.get('shape')}, the manifest "
                            f"says {e.dtype} {list(e.shape)}")
        begin, end = info["data_offsets"]
        if end - begin != e.nbytes:
            raise WireError(f"bucket {index}: {name} holds {end - begin} bytes, expected {e.nbytes}")


def read_header(path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file, checked against the file's size."""
    import os

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WireError(f"{path}: not safetensors (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise WireError(f"{path}: not safetensors (header length {n} exceeds the file, {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise WireError(f"{path}: safetensors header is not JSON ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise WireError(f"{path}: {size} bytes, the header describes {8 + n + end} (a torn transfer?)")
    return header, 8 + n
