"""The `RolloutEngine` protocol: what the loops and `lvr eval` see, whichever engine sits behind it
(transformers `generate` in process, or vLLM in process or as a sidecar server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """n replies per prompt; temperature 0 means greedy (then n must be 1).

    `seed`: request i of a call samples its n replies from a stream seeded `seed + i * n`, in every engine,
    so a request's replies do not depend on which other requests share its call (or its batch): a caller
    that splits a call into parts passes part k the seed `seed + start_k * n`."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self):
        if self.temperature == 0 and self.n != 1:
            raise ValueError("greedy decoding (temperature 0) gives one reply; set n=1 or temperature > 0")


@dataclass
class RolloutRequest:
    """One prompt with its video, already embedded.

    input_ids, mm_token_type_ids: (S,) int64, the prompt with the video placeholder expanded
    video_embeds: (N, hidden), N = number of video pad tokens in input_ids
    video_grid_thw: (1, 3); second_per_grid_t: seconds per temporal patch, or None
    """

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    video_embeds: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_t: float | None = None


@dataclass
class Rollout:
    """One reply: sampled token ids (EOS included when it stopped), their log-probs under the
    sampling distribution (logits / temperature), the decoded text, and whether it hit EOS."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finished: bool


class RolloutEngine(Protocol):
    def generate(self, requests: list[RolloutRequest], params: SamplingParams) -> list[list[Rollout]]:
        """params.n rollouts for each request, in request order."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine generate with `model`'s current weights (after an optimizer step)."""
        ...


NamedTensors = Iterable[tuple[str, torch.Tensor]]


class ServableEngine(RolloutEngine, Protocol):
    """An engine that owns its model (vLLM's, or a server's copy) and so can be served: weights arrive
    as (name, tensor) pairs named as in the trainer's transformers state dict."""

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """{name: shape} of every weight the engine accepts, to check a transfer before any byte loads."""
        ...

    def load_weights(self, named_tensors: NamedTensors, checked: bool = False) -> None:
        """Load these tensors into the engine's model in place; generation then uses them. Unless the caller
        `checked` them against `weight_shapes`, a bad name or shape is an error that changes nothing."""
        ...
