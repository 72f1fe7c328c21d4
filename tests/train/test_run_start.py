"""What a run decides at start-up from its config and model."""

from __future__ import annotations


def test_activation_checkpointing_is_on_by_default_for_models_larger_than_small():
    from types import SimpleNamespace

    from lvr_trainer.config import TrainerConfig
    from lvr_trainer.train.run_start import wants_activation_checkpointing

    def model(hidden, layers):
        return SimpleNamespace(config=SimpleNamespace(text_config=SimpleNamespace(hidden_size=hidden,
                                                                                  num_hidden_layers=layers)))
    cfg = lambda **train: TrainerConfig.model_validate(  # noqa: E731
        {"model": {"preset": "tiny"}, "data": {"train": "t.jsonl"}, "output": {"dir": "o"}, "train": train})
    assert not wants_activation_checkpointing(cfg(), model(384, 4))          # small and below: off
    assert wants_activation_checkpointing(cfg(), model(3584, 28))            # 7B: on
    assert not wants_activation_checkpointing(cfg(gradient_checkpointing=False), model(3584, 28))
    assert wants_activation_checkpointing(cfg(gradient_checkpointing=True), model(64, 2))
