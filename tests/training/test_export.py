"""`recsys export`: a trained run round-trips into a verified bundle; the SavedModel featurises raw inputs exactly
as the pipeline does; a failed export publishes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import training.export as export_module
from recsys.bundle import (
    VERSION_RE,
    BundleError,
    DimensionError,
    EmbeddingValueError,
    bundle_files,
    latest_version,
    list_versions,
    load_bundle,
)
from recsys.config import ModelConfig, TrainConfig
from recsys.errors import InputError
from recsys.model import PAD
from training.data import to_batch
from training.evaluate import load_run
from training.export import export_bundle, raw_features, serving_signature
from training.train import RUN_BIAS_FILE, RUN_EMBEDDINGS_FILE, train

SMALL = ModelConfig(hidden=[32], embedding_dim=16, video_input_dim=8, token_input_dim=8, category_dim=4)


@pytest.fixture(scope="module")
def run_dir(synthetic_examples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished training run (two epochs of the log-uniform sampled softmax), above popularity."""
    out = tmp_path_factory.mktemp("export") / "run"
    cfg = TrainConfig(
        loss="loguniform",
        learning_rate=0.01,  # a small log's few steps need a larger Adam step to pass popularity, as export requires
        batch_size=128,
        epochs=2,
        uniform_samples=128,
        eval_max_examples=300,
        shuffle_window=2000,
    )
    train(synthetic_examples, out, SMALL, cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundles directory with one export of run_dir."""
    out = tmp_path_factory.mktemp("bundles")
    export_bundle(run_dir, out)
    return out


def test_round_trip(run_dir, exported):
    bundle = load_bundle(exported / "latest")
    data, _ = load_run(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    assert VERSION_RE.match(bundle.model_version) and latest_version(exported) == bundle.model_version
    np.testing.assert_array_equal(bundle.embeddings, np.load(run_dir / RUN_EMBEDDINGS_FILE))
    np.testing.assert_array_equal(bundle.bias, np.load(run_dir / RUN_BIAS_FILE))
    assert bundle.video_ids.tolist() == ["[OOV]", *data.features.videos.values.to_pylist()]
    assert bundle.features.tokens.values.equals(data.features.tokens.values)
    assert bundle.features.numeric == data.features.numeric
    m = bundle.manifest
    assert (m["embedding_dim"], m["n_videos"]) == (16, len(data.features.videos))
    assert m["metrics"]["validation"]["recall@100"] == report["epochs"][report["best_epoch"] - 1]["recall@100"]
    assert m["metrics"]["loss"] == "loguniform" and m["index"] is None
    assert set(m["files"]) == set(bundle_files(bundle.path))  # a checksum for every other file
    assert {"user_tower/saved_model.pb", "videos.parquet", "vocab/tokens.parquet", "queries.npy"} <= set(m["files"])
    cfg = bundle.config
    assert cfg["model"] == SMALL.model_dump(mode="json") and cfg["train"]["loss"] == "loguniform"
    assert (cfg["max_history"], cfg["max_tokens"], cfg["max_search_tokens"]) == (50, 50, 50)
    assert Path(cfg["source"]["examples"]) == data.directory.resolve()
    assert bundle.queries is not None and bundle.queries.shape == (min(2000, data.count("test")), 16)


@pytest.fixture(scope="module", params=["recency", "attention", "sequence"])
def pooled_run(request: pytest.FixtureRequest, synthetic_examples: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny finished run of a sequence-aware history pooling, and a bundles directory with its export."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    model_cfg = SMALL.model_copy(update={"history_pooling": request.param})
    cfg = TrainConfig(loss="inbatch", batch_size=256, epochs=1, eval_max_examples=300, shuffle_window=2000)
    train(synthetic_examples, root / "run", model_cfg, cfg, progress=False)
    # What is checked here is the SavedModel against the training tower, not quality: one epoch need not beat
    # popularity, which export otherwise requires.
    export_bundle(root / "run", root / "bundles", force=True)
    return root / "run", root / "bundles"


def test_saved_model_matches_training_tower_on_raw_inputs(run_dir, exported):
    _check_saved_tower(run_dir, exported)


def test_saved_model_of_a_sequence_pooling_matches_its_training_tower(pooled_run):
    run, bundles = pooled_run
    assert load_bundle(bundles).config["model"]["history_pooling"] in ("recency", "attention", "sequence")
    _check_saved_tower(run, bundles)


def _check_saved_tower(run_dir: Path, exported: Path) -> None:
    """The SavedModel on raw strings gives the training tower's user vectors (cold start, OOV, wider histories)."""
    data, model = load_run(run_dir)
    tower = load_bundle(exported).user_tower()
    batch = to_batch(data.read("test", 64), data.max_history, data.max_tokens)
    batch["history"][0] = PAD  # an empty history and no searches (cold start)
    batch["search_tokens"][0] = PAD
    batch["history"][1, :5] = 0  # out-of-vocabulary videos in the history
    batch["country"][2] = 0
    batch["age"][3] = 0.0  # a missing age normalises to 0
    raw = raw_features(batch, data.features)
    raw["history"][1, :5] = ["never-seen-1", "never-seen-2", "never-seen-3", "[OOV]", "never-seen-1"]
    raw["country"][2] = "Atlantis"
    raw["age"][3] = np.nan

    expected = model.tower({k: tf.constant(batch[k]) for k in serving_signature()}).numpy()
    spec = serving_signature()
    got = tower(**{k: tf.constant(raw[k], dtype=spec[k].dtype) for k in spec})["user_vector"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    # More history than max_history (oldest first): only the most recent max_history count, as in training.
    older = np.full((len(batch["history"]), 7), "v-older", dtype=object)
    raw["history"] = np.concatenate([older, raw["history"]], axis=1)
    full_rows = (batch["history"] >= 0).all(axis=1)
    assert full_rows.any()
    wider = tower(**{k: tf.constant(raw[k], dtype=spec[k].dtype) for k in spec})["user_vector"].numpy()
    np.testing.assert_allclose(wider[full_rows], expected[full_rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("writer", ["_write_arrays", "write_user_tower"])
def test_crash_mid_export_keeps_the_previous_bundle(run_dir, exported, tmp_path, monkeypatch, writer):
    out = tmp_path / "bundles"
    shutil.copytree(exported, out, symlinks=True)
    before = sorted(os.listdir(out))
    previous = latest_version(out)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, writer, crash)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(run_dir, out)
    assert sorted(os.listdir(out)) == before  # no new version, no half-written temp directory
    assert latest_version(out) == previous and load_bundle(out).model_version == previous


def test_export_refuses_bad_embeddings_and_publishes_nothing(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    good = np.load(run / RUN_EMBEDDINGS_FILE)
    out = tmp_path / "bundles"

    bad = good.copy()
    bad[3, 2] = np.nan
    np.save(run / RUN_EMBEDDINGS_FILE, bad)
    with pytest.raises(EmbeddingValueError, match="NaN/Inf"):
        export_bundle(run, out)
    np.save(run / RUN_EMBEDDINGS_FILE, good[:, :-1])
    with pytest.raises(DimensionError, match="shape"):
        export_bundle(run, out)
    np.save(run / RUN_EMBEDDINGS_FILE, good + 1.0)
    with pytest.raises(BundleError, match="do not match"):
        export_bundle(run, out)
    np.save(run / RUN_EMBEDDINGS_FILE, good)
    np.save(run / RUN_BIAS_FILE, np.zeros(5, np.float32))
    with pytest.raises(DimensionError, match="bias"):
        export_bundle(run, out)
    assert not out.exists() or list_versions(out) == []


def test_export_builds_an_index_on_request(run_dir, tmp_path):
    path = export_bundle(run_dir, tmp_path / "bundles", index_spec="auto", target_recall=0.9)
    bundle = load_bundle(path)
    record = bundle.manifest["index"]
    assert record["spec"] == "Flat" and record["recall"] == 1.0  # < 50k videos: exact
    assert record["recall_queries"]["source"] == "test-split user vectors"
    assert bundle.index is not None and bundle.index.ntotal == bundle.n_videos - 1


def _recsys(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "recsys", *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_cli_export_then_index_build(run_dir, tmp_path):
    out = tmp_path / "bundles"
    done = _recsys("export", "--run", str(run_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    first = latest_version(out)
    assert first and f"-> {out / first}" in done.stdout
    done = _recsys("index", "build", "--bundle", str(out), "--spec", "IVF16,Flat", "--target-recall", "0.9")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "index IVF16,Flat" in done.stdout
    bundle = load_bundle(out)
    assert bundle.model_version != first and bundle.manifest["derived_from"] == first
    assert bundle.manifest["index"]["tuning"]["reached"]
    # A damaged bundle: one-line error, exit code 2, the previous bundles untouched.
    (bundle.path / "config.json").write_text("{}")
    bad = _recsys("index", "build", "--bundle", str(out))
    assert bad.returncode == 2 and "manifest" in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr
    assert list_versions(out) == [first, bundle.model_version]


def test_export_refuses_an_unfinished_run(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "report.json"))
    with pytest.raises(InputError, match=r"not a finished training run \(no report.json\)"):
        export_bundle(run, tmp_path / "bundles")


@pytest.fixture(scope="module")
def untrained_run(synthetic_examples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run that learned nothing (a vanishing learning rate): below popularity on validation."""
    out = tmp_path_factory.mktemp("untrained") / "run"
    cfg = TrainConfig(
        loss="loguniform",
        batch_size=128,
        epochs=1,
        learning_rate=1e-9,
        uniform_samples=128,
        eval_max_examples=300,
        shuffle_window=2000,
    )
    train(synthetic_examples, out, SMALL, cfg, progress=False)
    return out


def test_a_run_below_popularity_says_so_and_is_refused_unless_forced(
    untrained_run: Path, run_dir: Path, tmp_path: Path
) -> None:
    report = json.loads((untrained_run / "report.json").read_text())
    assert report["beats_popularity"] is False
    assert report["best_validation"]["recall@100"] <= report["validation_popularity"]["recall@100"]
    assert json.loads((run_dir / "report.json").read_text())["beats_popularity"] is True
    out = tmp_path / "bundles"
    with pytest.raises(BundleError, match="popularity"):
        export_bundle(untrained_run, out)
    assert not out.exists() or not list_versions(out)  # nothing published
    forced = export_bundle(untrained_run, out, force=True)
    assert load_bundle(forced).manifest["model_version"]
