"""Model bundles: load_bundle verifies everything serving relies on; publication and index builds are atomic.

The bundle here comes from a tiny untrained model (what matters is the file contract, not the weights); the
round trip of a real trained run is in tests/training/test_export.py.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from recsys.bundle import (
    FORMAT_VERSION,
    VERSION_RE,
    BundleFormatError,
    ChecksumError,
    CorruptIndexError,
    DimensionError,
    EmbeddingValueError,
    bundle_files,
    index_bundle,
    latest_version,
    list_versions,
    load_bundle,
    new_version,
    set_latest,
    write_manifest,
)
from recsys.config import ModelConfig
from recsys.features import FeatureSpace, NumericStats, Vocabulary
from recsys.index import VideoIndex
from recsys.model import Cardinalities, build_model
from training.export import export_model

TINY = ModelConfig(hidden=[16], embedding_dim=8, video_input_dim=4, token_input_dim=4, category_dim=2)
N_VIDEOS = 60


def _vocab(values: list[str]) -> Vocabulary:
    counts = pa.table(
        {"value": pa.array(values, pa.string()), "count": pa.array(range(len(values), 0, -1), pa.int64())}
    )
    return Vocabulary.from_counts(counts)


def tiny_features() -> FeatureSpace:
    """Vocabularies for a 60-video catalogue (gender left empty: only the OOV index)."""
    return FeatureSpace(
        videos=_vocab([f"v{i}" for i in range(1, N_VIDEOS)]),
        tokens=_vocab(["cat", "dog"]),
        categorical={"country": _vocab(["US", "IN"]), "device": _vocab(["mobile"]), "gender": _vocab([])},
        numeric=NumericStats(age_mean=30.0, age_std=10.0),
    )


def tiny_batch(rows: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    history = rng.integers(0, N_VIDEOS, size=(rows, 5)).astype(np.int32)
    history[rng.random((rows, 5)) < 0.3] = -1
    return {
        "history": history,
        "search_tokens": rng.integers(-1, 3, size=(rows, 3)).astype(np.int32),
        "country": rng.integers(0, 3, rows).astype(np.int32),
        "device": rng.integers(0, 2, rows).astype(np.int32),
        "gender": np.zeros(rows, np.int32),
        "example_age_days": np.zeros(rows, np.float32),
        "age": rng.normal(size=rows).astype(np.float32),
        "logged_in": rng.integers(0, 2, rows).astype(np.float32),
        "label": rng.integers(1, N_VIDEOS, rows).astype(np.int32),
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundles directory holding one exported bundle (with a Flat index) and `latest` pointing at it."""
    tf.keras.utils.set_random_seed(0)
    sizes = Cardinalities(videos=N_VIDEOS, tokens=3, country=3, device=2, gender=1)
    model = build_model(sizes, TINY, max_history=5, max_tokens=3)
    model.output_layer.bias.assign(np.random.default_rng(1).normal(0, 0.1, N_VIDEOS).astype(np.float32))
    out = tmp_path_factory.mktemp("bundles")
    export_model(
        model,
        tiny_features(),
        model.output_layer.table.numpy(),
        model.output_layer.bias.numpy(),
        out,
        max_history=5,
        max_tokens=3,
        max_search_tokens=3,
        held_out=tiny_batch(),
        metrics={"validation": {"recall@100": 0.5}},
        index_spec="Flat",
    )
    return out


@pytest.fixture
def bundle_copy(bundles: Path, tmp_path: Path) -> Path:
    """A private copy of the published bundle to damage."""
    target = tmp_path / "copy"
    shutil.copytree(bundles / "latest", target)
    return target


def test_load_bundle_verifies_and_exposes_everything(bundles):
    bundle = load_bundle(bundles)  # a bundles directory means its latest
    assert bundle.path == (bundles / latest_version(bundles)).resolve()
    assert VERSION_RE.match(bundle.model_version) and bundle.model_version == bundle.path.name
    assert bundle.manifest["format_version"] == FORMAT_VERSION
    assert bundle.embedding_dim == 8 and bundle.n_videos == N_VIDEOS
    assert bundle.embeddings.shape == (N_VIDEOS, 8) and bundle.bias.shape == (N_VIDEOS,)
    assert bundle.video_ids[:3].tolist() == ["[OOV]", "v1", "v2"]
    assert len(bundle.features.videos) == N_VIDEOS and len(bundle.features.categorical["gender"]) == 1
    assert bundle.queries is not None and bundle.queries.shape == (40, 8)
    assert set(bundle.manifest["files"]) == set(bundle_files(bundle.path))
    assert bundle.manifest["metrics"] == {"validation": {"recall@100": 0.5}}
    assert bundle.index is not None and bundle.manifest["index"]["spec"] == "Flat"
    ids, _ = bundle.index.search(bundle.queries[:3], 5)
    assert ids.shape == (3, 5) and (ids > 0).all()
    tower = bundle.user_tower()
    out = tower(
        history=tf.constant([["v1", "v2", ""], ["", "", ""]]),
        search_tokens=tf.constant([["cat"], [""]]),
        country=tf.constant(["US", "??"]),
        device=tf.constant(["mobile", ""]),
        gender=tf.constant(["", "F"]),
        age=tf.constant([31.0, np.nan]),
        logged_in=tf.constant([1.0, 0.0]),
        example_age_days=tf.constant([0.0, 0.0]),
    )["user_vector"]
    assert out.shape == (2, 8) and np.isfinite(out.numpy()).all()


def test_checksum_size_missing_and_unlisted_files_are_refused(bundle_copy):
    emb_path = bundle_copy / "embeddings.npy"
    data = bytearray(emb_path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    emb_path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256 does not match"):
        load_bundle(bundle_copy)
    data[-1] ^= 0xFF
    emb_path.write_bytes(bytes(data))
    load_bundle(bundle_copy)  # restored: fine again

    config = bundle_copy / "config.json"
    original = config.read_text()
    config.write_text(original.replace('"max_history": 5', '"max_history": 50'))
    with pytest.raises(ChecksumError, match="size"):
        load_bundle(bundle_copy)
    config.write_text(original)

    (bundle_copy / "extra.txt").write_text("sneaked in")
    with pytest.raises(ChecksumError, match="not listed"):
        load_bundle(bundle_copy)
    (bundle_copy / "extra.txt").unlink()

    (bundle_copy / "bias.npy").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        load_bundle(bundle_copy)


def test_newer_format_and_malformed_manifests_are_refused(bundle_copy):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest | {"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(BundleFormatError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == f"bundle format {FORMAT_VERSION + 1} is newer than this code supports ({FORMAT_VERSION})"
    path.write_text(json.dumps(manifest | {"format_version": "1"}))
    with pytest.raises(BundleFormatError, match="positive integer"):
        load_bundle(bundle_copy)
    path.write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        load_bundle(bundle_copy)
    path.unlink()
    with pytest.raises(BundleFormatError, match="not a model bundle"):
        load_bundle(bundle_copy)


def test_non_finite_embeddings_are_refused_even_with_matching_checksums(bundle_copy):
    emb = np.load(bundle_copy / "embeddings.npy")
    emb[7, 3] = np.nan
    np.save(bundle_copy / "embeddings.npy", emb)
    write_manifest(bundle_copy, json.loads((bundle_copy / "manifest.json").read_text()))
    with pytest.raises(EmbeddingValueError, match="NaN/Inf"):
        load_bundle(bundle_copy)
    emb[7, 3] = 0.0
    bias = np.load(bundle_copy / "bias.npy")
    bias[2] = np.inf
    np.save(bundle_copy / "embeddings.npy", emb)
    np.save(bundle_copy / "bias.npy", bias)
    write_manifest(bundle_copy, json.loads((bundle_copy / "manifest.json").read_text()))
    with pytest.raises(EmbeddingValueError, match="bias"):
        load_bundle(bundle_copy)


def test_dimension_mismatches_are_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    emb, bias = np.load(bundle_copy / "embeddings.npy"), np.load(bundle_copy / "bias.npy")

    # An index built over other (wider) vectors than the model's embeddings.
    VideoIndex.build(np.hstack([emb, emb]), bias, "Flat").write(bundle_copy / "index.faiss")
    write_manifest(bundle_copy, manifest)
    with pytest.raises(DimensionError, match="index dimension"):
        load_bundle(bundle_copy)
    # An index over fewer videos.
    VideoIndex.build(emb[:30], bias[:30], "Flat").write(bundle_copy / "index.faiss")
    write_manifest(bundle_copy, manifest)
    with pytest.raises(DimensionError, match="holds 29 vectors"):
        load_bundle(bundle_copy)
    VideoIndex.build(emb, bias, "Flat").write(bundle_copy / "index.faiss")

    # Embeddings narrower than the user tower's output, with a manifest that agrees with the embeddings.
    np.save(bundle_copy / "embeddings.npy", emb[:, :6])
    VideoIndex.build(emb[:, :6], bias, "Flat").write(bundle_copy / "index.faiss")
    np.save(bundle_copy / "queries.npy", np.zeros((2, 6), np.float32))
    write_manifest(bundle_copy, manifest | {"embedding_dim": 6})
    with pytest.raises(DimensionError, match="user tower outputs"):
        load_bundle(bundle_copy)
    # The manifest disagreeing with the embeddings.
    write_manifest(bundle_copy, manifest)
    with pytest.raises(DimensionError, match=r"expected \(60, 8\)"):
        load_bundle(bundle_copy)
    write_manifest(bundle_copy, manifest | {"embedding_dim": 6, "n_videos": 61})
    with pytest.raises(DimensionError):
        load_bundle(bundle_copy)


def test_truncated_or_corrupt_index_is_refused(bundle_copy):
    path = bundle_copy / "index.faiss"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ChecksumError, match="size"):
        load_bundle(bundle_copy)
    # Even with checksums written over the damaged file, reading it fails with a clear message.
    write_manifest(bundle_copy, json.loads((bundle_copy / "manifest.json").read_text()))
    with pytest.raises(CorruptIndexError, match="truncated or corrupt"):
        load_bundle(bundle_copy)
    path.write_bytes(os.urandom(4096))
    write_manifest(bundle_copy, json.loads((bundle_copy / "manifest.json").read_text()))
    with pytest.raises(CorruptIndexError):
        load_bundle(bundle_copy)


def test_versions_are_monotonic_and_latest_moves_atomically(tmp_path, bundles):
    assert new_version(tmp_path, "ab" * 16, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)) == "20300102T030405Z-abababab"
    (tmp_path / "20300102T030405Z-abababab").mkdir()
    # The clock going back, or a second export within the same second, still sorts after the newest version.
    assert new_version(tmp_path, "cd" * 16, datetime(2029, 1, 1, tzinfo=UTC)) == "20300102T030406Z-cdcdcdcd"
    assert new_version(tmp_path, "ef" * 16, datetime(2031, 1, 1, tzinfo=UTC)) == "20310101T000000Z-efefefef"
    with pytest.raises(ValueError):
        new_version(tmp_path, "not hex")

    shutil.copytree(bundles / "latest", tmp_path / "20300102T030406Z-cdcdcdcd")
    set_latest(tmp_path, "20300102T030406Z-cdcdcdcd")
    assert (tmp_path / "latest").is_symlink() and latest_version(tmp_path) == "20300102T030406Z-cdcdcdcd"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp link left


def test_index_bundle_publishes_a_new_version_and_leaves_the_source_alone(bundles, tmp_path):
    root = tmp_path / "bundles"
    shutil.copytree(bundles, root, symlinks=True)
    source = load_bundle(root)
    new = index_bundle(root / "latest", "IVF4,Flat", target_recall=0.9)
    assert list_versions(root) == sorted([source.model_version, new.name]) and new.name > source.model_version
    assert latest_version(root) == new.name
    bundle = load_bundle(root)
    record = bundle.manifest["index"]
    assert bundle.manifest["derived_from"] == source.model_version
    assert record["spec"] == "IVF4,Flat" and record["tuning"]["target"] == 0.9 and "nprobe" in record["params"]
    assert record["recall_queries"]["source"] == "test-split user vectors"
    assert bundle.index is not None and bundle.index.spec == "IVF4,Flat"
    assert new.name.endswith(source.manifest["model_hash"])  # same model, new bundle version
    # Unchanged files are hard links; the source still verifies against its own manifest.
    assert (new / "embeddings.npy").stat().st_ino == (source.path / "embeddings.npy").stat().st_ino
    assert load_bundle(source.path).manifest == source.manifest


def test_index_bundle_crash_publishes_nothing(bundles, tmp_path, monkeypatch):
    root = tmp_path / "bundles"
    shutil.copytree(bundles, root, symlinks=True)
    before = sorted(p.name for p in root.iterdir())

    def crash(self, path):
        path.write_bytes(b"half an index")
        raise OSError("disk full")

    monkeypatch.setattr(VideoIndex, "write", crash)
    with pytest.raises(OSError, match="disk full"):
        index_bundle(root, "Flat")
    assert sorted(p.name for p in root.iterdir()) == before  # no new version, no temp directory
    load_bundle(root)
