"""How long a run trains: the epoch cap and the early-stopping patience, from the config and the log's size.

A fixed epoch count is the wrong unit across logs: ML-100K's time split has 68 steps per epoch at batch 1024 and a
young model can sit on popularity's plateau for hundreds of steps, while a 1M-video log has thousands of steps per
epoch. With no epoch count set a run therefore trains until validation stops improving, never stopping before a
number of optimizer steps, and an epoch cap only bounds a run that keeps improving (the report says when it bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recsys.config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    """The epochs a run may take and the epochs without improvement that stop it, with where they came from."""

    epochs: int
    patience: int
    steps_per_epoch: int
    epochs_from: str
    patience_from: str
    # Early stopping may end a planned run only after this many steps: on ML-100K with a 100- or 200-watch history
    # the default tower rose above popularity early, sat on a plateau for 6 epochs and was stopped at epoch 18,
    # before the take-off that the 50-watch run reached (validation recall@100 0.3564 / 0.3726 against 0.5260).
    stop_after_step: int = 0


def schedule(cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The run's epoch cap and patience (in epochs, >= patience_steps).

    cfg.epochs set: that cap, early stopping as configured. Unset: train until early stopping ends the run, which it
    may not before cfg.min_steps optimizer steps (a young model can sit on popularity's plateau), with
    cfg.max_auto_epochs as the cap that bounds a run whose validation never stops improving.
    """
    per_epoch = max(1, steps_per_epoch)
    stop_after = 0
    if cfg.epochs is not None:
        epochs, epochs_from = cfg.epochs, "set (train.epochs)"
    else:
        stop_after = cfg.min_steps
        epochs = cfg.max_auto_epochs
        epochs_from = (
            f"derived: until early stopping, not before min_steps {cfg.min_steps} "
            f"({math.ceil(cfg.min_steps / per_epoch)} epochs of {per_epoch} steps per epoch), at most "
            f"max_auto_epochs {cfg.max_auto_epochs}"
        )
    by_steps = math.ceil(cfg.patience_steps / per_epoch)
    patience = max(cfg.patience, by_steps)
    patience_from = (
        f"patience_steps {cfg.patience_steps} / {per_epoch} steps per epoch"
        if by_steps > cfg.patience
        else "set (train.patience)"
    )
    return Schedule(epochs, patience, per_epoch, epochs_from, patience_from, stop_after)
