"""Small real example sets for training tests: a synthetic log through the real pipeline, and ML-100K."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.pipeline import run_pipeline
from pipelines.sources import resolve_inputs
from pipelines.synthetic import generate
from recsys.config import GeneratorConfig, PipelineConfig

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k.zip"


@pytest.fixture(scope="session")
def synthetic_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Examples from a 600-user, 3,000-video synthetic log."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(GeneratorConfig(users=600, videos=3000, events=60_000, topics=20, seed=3), root / "log", progress=False)
    run_pipeline(
        resolve_inputs(root / "log"),
        root / "examples",
        PipelineConfig(max_examples_per_user=30, test_days=5, validation_days=5, workers=1),
        progress=False,
    )
    return root / "examples"


@pytest.fixture(scope="session")
def ml100k_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ML-100K examples with a time split (last 14 days test, 14 before validation), up to 200 per user."""
    if not ML100K.exists():
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    out = tmp_path_factory.mktemp("ml100k") / "examples"
    run_pipeline(
        resolve_inputs(ML100K),
        out,
        PipelineConfig(max_examples_per_user=200, test_days=14, validation_days=14, workers=1),
        progress=False,
    )
    return out
