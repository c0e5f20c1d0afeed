"""The training layer: train the two-tower model, evaluate a run, export it as a model bundle (TensorFlow).

Each name is imported on first use, so ``import training`` loads no TensorFlow until a function is touched. The
functions behind ``recsys train`` and ``recsys export`` are exported as ``train_model`` and ``export_bundle``
(``training.train`` and ``training.export`` are the modules that define them); ``recsys evaluate`` is
``evaluate_run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.lazy import lazy_exports

if TYPE_CHECKING:
    from training.demo import DemoConfig, run_demo
    from training.evaluate import evaluate_run, load_run
    from training.export import export_bundle, export_model
    from training.train import train as train_model

__all__ = [
    "DemoConfig",
    "evaluate_run",
    "export_bundle",
    "export_model",
    "load_run",
    "run_demo",
    "train_model",
]

# What __getattr__ imports on first use: the same names as the TYPE_CHECKING imports above (a test checks it).
_EXPORTS = {
    "training.demo": ["DemoConfig", "run_demo"],
    "training.evaluate": ["evaluate_run", "load_run"],
    "training.export": ["export_bundle", "export_model"],
    "training.train": ["train as train_model"],
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
