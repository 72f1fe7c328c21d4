from __future__ import annotations

import pytest
import torch

from lvr_trainer.cache.payload import CachedVideo

torch.set_num_threads(1)


def make_entry(n: int = 16, hidden: int = 8, seed: int = 0) -> CachedVideo:
    g = torch.Generator().manual_seed(seed)
    return CachedVideo(torch.randn(n, hidden, generator=g), torch.tensor([[2, 4, 2 * n // 4]]),
                       {"second_per_grid_ts": 0.5})


@pytest.fixture()
def entry():
    return make_entry()


KEY = "ab" + "0" * 62
