"""Pure tests of the sequence split/pad helpers and the grid/heads validation (no processes)."""

from __future__ import annotations

import pytest
import torch

from lvr_trainer.parallel import (causal_padding_mask, check_attention_heads, is_right_padded, pad_and_split,
                                  pad_to_multiple, padded_length, plan_grid, shard_bounds, split_for_rank, unpad)


@pytest.mark.parametrize("length,sp,expected", [(10, 4, 12), (12, 4, 12), (1, 2, 2), (7, 1, 7), (0, 3, 0)])
def test_padded_length(length, sp, expected):
    assert padded_length(length, sp) == expected


def test_shards_cover_the_padded_sequence_once():
    x = torch.arange(2 * 10).view(2, 10)
    padded = pad_to_multiple(x, 4, dim=1, value=-1)                      # (2, 12)
    assert padded.shape == (2, 12) and (padded[:, 10:] == -1).all()
    shards = [split_for_rank(padded, 4, r, dim=1) for r in range(4)]
    assert [s.shape[1] for s in shards] == [3, 3, 3, 3]
    assert torch.equal(torch.cat(shards, dim=1), padded)
    assert torch.equal(unpad(torch.cat(shards, dim=1), 10), x)
    assert torch.equal(pad_and_split(x, 4, 3, dim=1, value=-1), torch.tensor([[9, -1, -1], [19, -1, -1]]))


def test_split_along_other_dims_and_no_copy_when_aligned():
    pos = torch.arange(3 * 2 * 8).view(3, 2, 8)                          # mRoPE (3, B, T)
    assert pad_to_multiple(pos, 4, dim=2) is pos
    assert torch.equal(split_for_rank(pos, 4, 1, dim=2), pos[:, :, 2:4])
    assert shard_bounds(8, 4, 3) == (6, 8)


def test_split_keeps_gradients_flowing_to_the_full_tensor():
    x = torch.randn(1, 5, 3, requires_grad=True)
    pad_and_split(x, 2, 1, dim=1).sum().backward()                       # rank 1 holds positions 3, 4 (+ pad)
    assert torch.equal(x.grad[0, :, 0], torch.tensor([0.0, 0, 0, 1, 1]))


def test_bad_shard_arguments_are_refused():
    with pytest.raises(ValueError, match="not a multiple"):
        shard_bounds(10, 4, 0)
    with pytest.raises(ValueError, match="outside"):
        shard_bounds(8, 4, 4)
    with pytest.raises(ValueError, match="sp_size"):
        padded_length(4, 0)


def test_right_padding_detection():
    assert is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert not is_right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))


def test_causal_padding_mask_has_no_empty_rows():
    mask = causal_padding_mask(torch.tensor([[0, 1, 1, 0]]))             # (1, 1, 4, 4)
    expected = torch.tensor([[1, 0, 0, 0],      # left pad: sees only itself
                             [0, 1, 0, 0],
                             [0, 1, 1, 0],
                             [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)


def test_grid_layout():
    layout = plan_grid(8, 4)
    assert (layout.dp_size, layout.sp_size) == (2, 4)
    assert layout.sp_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.dp_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.coords(6) == (1, 2)


@pytest.mark.parametrize("world,sp,match", [(4, 3, "set sequence_parallel to one of \\[1, 2, 4\\]"),
                                            (2, 4, "does not divide the world size 2"),
                                            (2, 0, "must be >= 1")])
def test_impossible_grids(world, sp, match):
    with pytest.raises(ValueError, match=match):
        plan_grid(world, sp)


@pytest.mark.parametrize("heads,kv,sp,replicate", [(4, 2, 2, 1), (4, 2, 4, 2), (28, 4, 4, 1), (28, 4, 7, 7),
                                                   (8, 1, 8, 8), (16, 8, 2, 1)])
def test_kv_head_replication(heads, kv, sp, replicate):
    assert check_attention_heads(heads, kv, sp) == replicate


def test_heads_not_divisible_by_sp_is_refused():
    with pytest.raises(ValueError, match="must divide the model's attention heads \\(6\\).*\\[1, 2, 3, 6\\]"):
        check_attention_heads(6, 2, 4)
