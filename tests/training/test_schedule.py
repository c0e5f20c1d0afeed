"""The run length: epochs planned in optimizer steps when the config does not set them."""

from __future__ import annotations

import pytest

from recsys.config import TrainConfig
from training.schedule import schedule


def test_an_unset_cap_trains_until_early_stopping_after_min_steps_whatever_the_log() -> None:
    cfg = TrainConfig(min_steps=1000, max_auto_epochs=100)
    small = schedule(cfg, steps_per_epoch=68)  # ML-100K's time split at batch 1024
    large = schedule(cfg, steps_per_epoch=5000)
    assert small.epochs == large.epochs == 100  # the cap only bounds a run that never stops improving
    assert small.stop_after_step == large.stop_after_step == 1000  # early stopping waits for min_steps
    assert "derived" in small.epochs_from and "15 epochs of 68 steps per epoch" in small.epochs_from
    assert schedule(TrainConfig(max_auto_epochs=7), 68).epochs == 7


def test_a_set_epoch_cap_is_kept_whatever_the_log() -> None:
    cfg = TrainConfig(epochs=3)
    assert schedule(cfg, 69).epochs == schedule(cfg, 50_000).epochs == 3
    assert schedule(cfg, 69).epochs_from == "set (train.epochs)"
    assert schedule(cfg, 69).stop_after_step == 0  # a set cap: early stopping as configured


@pytest.mark.parametrize(
    ("per_epoch", "patience", "patience_steps", "expected"),
    [(69, 2, 400, 6), (5000, 2, 400, 2), (69, 8, 400, 8), (69, 2, 0, 2), (0, 2, 400, 400)],
)
def test_patience_waits_at_least_patience_steps(
    per_epoch: int, patience: int, patience_steps: int, expected: int
) -> None:
    plan = schedule(TrainConfig(patience=patience, patience_steps=patience_steps), per_epoch)
    assert plan.patience == expected
    assert plan.patience_from.startswith("patience_steps") == (expected > patience)
