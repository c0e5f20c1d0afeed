"""`recsys export` and `recsys index build`: a trained run -> a versioned, verified model bundle (+ FAISS index).

The exported user tower is a SavedModel whose ``serving_default`` signature takes RAW features (video ids, search
tokens, category strings, age in years): vocabulary lookups and the age normalisation run inside the graph, so
serving never re-implements featurisation. Export checks its own output before publishing: the bundle must load
and verify (recsys.bundle.load_bundle), and the SavedModel must give the training model's user vectors on a
sample of held-out examples.

TensorFlow (seconds to import) and FAISS are imported inside the functions that need them: the `recsys` command
line imports this module on every start to register its commands.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from recsys.errors import InputError
from recsys.features import CATEGORICAL_FEATURES, FeatureSpace, Vocabulary
from recsys.schemas import OOV_TOKEN

if TYPE_CHECKING:
    import tensorflow as tf

    from recsys.model import TwoTower, UserTower
    from training.data import Batch, ExampleSet

__all__ = [
    "build_user_tower_module",
    "export_bundle",
    "export_model",
    "raw_features",
    "register",
    "serving_signature",
]

WEIGHTS_FILE = "best.weights.h5"  # the run's files, as training/train.py writes them
RUN_FILES = ("run.json", WEIGHTS_FILE, "report.json", "video_embeddings.npy", "video_bias.npy")
MAX_QUERIES = 2000  # held-out user vectors stored for index tuning
CHECK_EXAMPLES = 256  # held-out examples on which the SavedModel must reproduce the training model
_CHECK_RTOL, _CHECK_ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------------------------------------- SavedModel
def serving_signature() -> dict[str, tf.TensorSpec]:
    """The raw-feature input signature of the exported user tower."""
    import tensorflow as tf

    from recsys.bundle import TOWER_INPUTS

    spec = {
        "history": tf.TensorSpec([None, None], tf.string, name="history"),
        "search_tokens": tf.TensorSpec([None, None], tf.string, name="search_tokens"),
    }
    spec |= {name: tf.TensorSpec([None], tf.string, name=name) for name in CATEGORICAL_FEATURES}
    spec |= {name: tf.TensorSpec([None], tf.float32, name=name) for name in ("age", "logged_in", "example_age_days")}
    assert set(spec) == set(TOWER_INPUTS)
    return spec


def _lookup_table(vocab: Vocabulary) -> tf.lookup.StaticHashTable:
    """value -> vocabulary index (int64), unknown -> OOV 0."""
    import tensorflow as tf

    keys = np.asarray(vocab.values.to_pylist(), dtype=object)
    values = np.arange(1, len(keys) + 1, dtype=np.int64)
    if len(keys) == 0:  # a table cannot be empty; mapping the OOV token to 0 changes nothing
        keys, values = np.asarray([OOV_TOKEN], dtype=object), np.zeros(1, np.int64)
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.constant(values, tf.int64))
    return tf.lookup.StaticHashTable(init, default_value=0)


def build_user_tower_module(
    tower: UserTower, features: FeatureSpace, max_history: int, max_search_tokens: int
) -> tf.Module:
    """The trained tower behind in-graph featurisation: a tf.Module whose ``serve`` maps raw features to u."""
    import tensorflow as tf

    from recsys.bundle import USER_VECTOR
    from recsys.sparse_optim import tf_variable

    module = tf.Module(name="user_tower")
    # Keras 3 does not expose layers held in lists to tf.train's object graph: track the variables directly.
    module.tower_variables = [tf_variable(v) for v in tower.weights]
    tables = {
        "history": _lookup_table(features.videos),
        "search_tokens": _lookup_table(features.tokens),
        **{name: _lookup_table(features.categorical[name]) for name in CATEGORICAL_FEATURES},
    }
    module.tables = tables  # tracked, so the SavedModel restores the tables with the function
    age_mean, age_std = float(features.numeric.age_mean), float(features.numeric.age_std)

    def serve(
        history: tf.Tensor,
        search_tokens: tf.Tensor,
        country: tf.Tensor,
        device: tf.Tensor,
        gender: tf.Tensor,
        age: tf.Tensor,
        logged_in: tf.Tensor,
        example_age_days: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        # Age as NumericStats.normalise_age computes it: float64, clipped to +-5, missing (NaN) -> 0.
        z = tf.clip_by_value((tf.cast(age, tf.float64) - age_mean) / age_std, -5.0, 5.0)
        z = tf.where(tf.math.is_nan(z), tf.zeros_like(z), z)
        categories = {"country": country, "device": device, "gender": gender}
        inputs = {
            "history": _sequence_ids(tables["history"], history, max_history),
            "search_tokens": _sequence_ids(tables["search_tokens"], search_tokens, max_search_tokens),
            **{name: tf.cast(tables[name].lookup(value), tf.int32) for name, value in categories.items()},
            "age": tf.cast(z, tf.float32),
            "logged_in": _nan_to_zero(logged_in),
            "example_age_days": _nan_to_zero(example_age_days),
        }
        return {USER_VECTOR: tower(inputs, training=False)}

    module.serve = tf.function(serve, input_signature=list(serving_signature().values()))
    return module


def _nan_to_zero(x: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    return tf.where(tf.math.is_nan(x), tf.zeros_like(x), x)


def _sequence_ids(table: tf.lookup.StaticHashTable, values: tf.Tensor, limit: int) -> tf.Tensor:
    """Vocabulary ids of the last `limit` non-empty strings of each row (oldest first), PAD elsewhere."""
    import tensorflow as tf

    from recsys.model import PAD

    present = tf.not_equal(values, "")
    from_end = tf.cumsum(tf.cast(present, tf.int32), axis=1, reverse=True)  # 1 for the most recent item
    keep = present & (from_end <= limit)
    return tf.where(keep, tf.cast(table.lookup(values), tf.int32), tf.constant(PAD, tf.int32))


def write_user_tower(module: tf.Module, path: Path) -> None:
    """Save the module as a SavedModel with its serving signature."""
    import tensorflow as tf

    from recsys.bundle import SIGNATURE_KEY

    tf.saved_model.save(module, str(path), signatures={SIGNATURE_KEY: module.serve})


def raw_features(batch: Batch, features: FeatureSpace) -> dict[str, np.ndarray]:
    """The raw inputs that featurise to a batch of index features (inverse of the vocabularies; for checks).

    PAD -> "" (padding), index 0 -> the OOV token (an unknown value), age -> years (mean for a missing age).
    """

    def strings(vocab: Vocabulary, ids: np.ndarray) -> np.ndarray:
        table = np.asarray([OOV_TOKEN, *vocab.values.to_pylist()], dtype=object)
        return np.where(ids >= 0, table[np.maximum(ids, 0)], "").astype(object)

    out = {
        "history": strings(features.videos, batch["history"]),
        "search_tokens": strings(features.tokens, batch["search_tokens"]),
        **{name: strings(features.categorical[name], batch[name]) for name in CATEGORICAL_FEATURES},
        "age": (batch["age"].astype(np.float64) * features.numeric.age_std + features.numeric.age_mean).astype(
            np.float32
        ),
        "logged_in": batch["logged_in"].astype(np.float32),
        "example_age_days": batch["example_age_days"].astype(np.float32),
    }
    return out


def _signature_inputs(raw: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    import tensorflow as tf

    spec = serving_signature()
    return {name: tf.constant(raw[name], dtype=spec[name].dtype) for name in spec}


# ---------------------------------------------------------------------------------------------- export
def _run_files(run: Path) -> None:
    for name in RUN_FILES:
        if not (run / name).is_file():
            raise InputError(f"{run}: not a finished training run (no {name})")


def _metrics_summary(run: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The run report's headline numbers (and a test evaluation, if `recsys evaluate` wrote one)."""
    best = report.get("best_epoch", -1)
    epochs = report.get("epochs", [])
    summary: dict[str, Any] = {
        "loss": report.get("loss"),
        "steps": report.get("steps"),
        "best_epoch": best,
        "stopped_early": report.get("stopped_early"),
        "data": report.get("data"),
        "validation": {k: v for k, v in epochs[best - 1].items() if k != "epoch"} if 0 < best <= len(epochs) else {},
        "validation_popularity": report.get("validation_popularity"),
    }
    evaluation = run / "evaluation-test.json"
    if evaluation.is_file():
        result = json.loads(evaluation.read_text())
        summary["test"] = {"model": result.get("model"), "popularity": result.get("popularity")}
    return summary


def _held_out(data: ExampleSet, limit: int) -> Batch | None:
    """Up to `limit` test examples (validation if the test split is empty) as a feature batch."""
    from training.data import to_batch

    for split in ("test", "validation"):
        table = data.read(split, limit)
        if table.num_rows:
            return to_batch(table, data.max_history, data.max_tokens)
    return None


def _content_hash(model: TwoTower, embeddings: np.ndarray, bias: np.ndarray, config: dict[str, Any]) -> str:
    """sha256 of what defines the model: every weight, the embeddings, the bias and the config."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    digest.update(np.ascontiguousarray(embeddings).tobytes())
    digest.update(np.ascontiguousarray(bias).tobytes())
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()


def _check_model(model: TwoTower, embeddings: np.ndarray, bias: np.ndarray, n_videos: int, where: str) -> None:
    """Refuse a run whose embeddings, vocabulary, tower width and weights do not agree."""
    from recsys.bundle import BundleError, DimensionError, check_embeddings

    dim = int(model.tower.config.embedding_dim)
    check_embeddings(embeddings, bias, n_videos, dim, where)
    tower_dim = int(model.tower.projection.units)
    if tower_dim != dim:
        raise DimensionError(f"{where}: the user tower outputs {tower_dim} dims, the embeddings have {dim}")
    table = model.output_layer.table.numpy()
    if table.shape != embeddings.shape or not np.array_equal(table, embeddings):
        raise BundleError(f"{where}: the embeddings do not match the output table in {WEIGHTS_FILE}")


def _verify_tower(path: Path, model: TwoTower, batch: Batch, features: FeatureSpace) -> float:
    """Max |SavedModel - training tower| on held-out examples fed as raw strings; BundleError beyond tolerance."""
    import tensorflow as tf

    from recsys.bundle import SIGNATURE_KEY, USER_VECTOR, BundleError
    from training.evaluate import user_vectors

    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures[SIGNATURE_KEY](**_signature_inputs(raw_features(batch, features)))[USER_VECTOR]
    expected = user_vectors(model, batch)
    got = served.numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=_CHECK_RTOL, atol=_CHECK_ATOL):
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
        raise BundleError(f"{path}: the exported user tower disagrees with the trained model (max diff {diff:.3g})")
    return float(np.max(np.abs(got - expected))) if len(got) else 0.0


def export_bundle(
    run: Path,
    out: Path,
    *,
    index_spec: str | None = None,
    target_recall: float | None = 0.95,
    now: datetime | None = None,
    max_queries: int = MAX_QUERIES,
    force: bool = False,
) -> Path:
    """Export a finished run as a new bundle version under `out`, make it `latest`, and return its path.

    ``index_spec`` ("auto" = the default for the catalogue size) also builds and tunes a FAISS index. Nothing
    is published unless every check passes; a failure leaves `out` as it was. A run whose validation recall is
    not above popularity's is refused unless ``force``: serving it would hand users a worse list than a count.
    """
    from training.evaluate import load_run
    from training.train import REPORT_FILE, RUN_BIAS_FILE, RUN_EMBEDDINGS_FILE, RUN_FILE

    run = Path(run)
    _run_files(run)
    data, model = load_run(run)
    meta = json.loads((run / RUN_FILE).read_text())
    report = json.loads((run / REPORT_FILE).read_text())
    _check_beats_popularity(run, report, force)
    embeddings = np.load(run / RUN_EMBEDDINGS_FILE)
    bias = np.load(run / RUN_BIAS_FILE)
    pipeline_cfg = json.loads((data.directory / "report.json").read_text())["config"]
    return export_model(
        model,
        data.features,
        embeddings,
        bias,
        out,
        max_history=data.max_history,
        max_tokens=data.max_tokens,
        max_search_tokens=int(pipeline_cfg.get("max_search_tokens", data.max_tokens)),
        held_out=_held_out(data, max(max_queries, CHECK_EXAMPLES)),
        metrics=_metrics_summary(run, report),
        extra_config={
            "train": meta["train"],
            "sizes": meta["sizes"],
            "source": {"run": str(run.resolve()), "examples": str(data.directory.resolve())},
        },
        index_spec=index_spec,
        target_recall=target_recall,
        now=now,
        max_queries=max_queries,
        where=str(run),
    )


def _check_beats_popularity(run: Path, report: dict[str, Any], force: bool) -> None:
    """Refuse (BundleError) a run that trained no better than popularity on validation, unless forced."""
    from recsys.bundle import BundleError

    if report.get("beats_popularity", True) or force:  # runs from before the check carry no verdict
        return
    best = report.get("best_validation", {}).get("recall@100", float("nan"))
    popularity = report.get("validation_popularity", {}).get("recall@100", float("nan"))
    raise BundleError(
        f"{run}: validation recall@100 {best:.4f} is not above popularity's {popularity:.4f}; the service would "
        "answer worse than its own popularity fallback. Train longer or tune the run, or pass --force to export it"
    )


def export_model(
    model: TwoTower,
    features: FeatureSpace,
    embeddings: np.ndarray,
    bias: np.ndarray,
    out: Path,
    *,
    max_history: int,
    max_tokens: int,
    max_search_tokens: int,
    held_out: Batch | None = None,
    metrics: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    index_spec: str | None = None,
    target_recall: float | None = 0.95,
    now: datetime | None = None,
    max_queries: int = MAX_QUERIES,
    where: str = "export",
) -> Path:
    """Write, verify and publish a bundle from an in-memory model, its vocabularies and its output table.

    ``held_out`` (index features of test examples) gives the stored tuning queries and the batch on which the
    SavedModel must reproduce ``model.tower``. Returns the published bundle's path (now ``out/latest``).
    """
    import pyarrow.parquet as pq

    from recsys import bundle as b
    from recsys.index import mixture_queries
    from recsys.publish import publish_dir
    from training.evaluate import user_vectors

    embeddings = np.asarray(embeddings)
    bias = np.asarray(bias)
    n_videos, dim = len(features.videos), int(model.tower.config.embedding_dim)
    _check_model(model, embeddings, bias, n_videos, where)
    embeddings = embeddings.astype(np.float32, copy=False)
    bias = bias.astype(np.float32, copy=False)
    config = {
        "model": model.tower.config.model_dump(mode="json"),
        "max_history": max_history,
        "max_tokens": max_tokens,
        "max_search_tokens": max_search_tokens,
        "output_bias": model.output_layer.bias is not None,
        "inputs": b.TOWER_INPUTS,
        **(extra_config or {}),
    }
    content_hash = _content_hash(model, embeddings, bias, config)
    queries = user_vectors(model, held_out)[:max_queries] if held_out is not None else None

    out = Path(out)
    version = b.new_version(out, content_hash, now)
    with publish_dir(out / version) as tmp:
        module = build_user_tower_module(model.tower, features, max_history, max_search_tokens)
        write_user_tower(module, tmp / b.USER_TOWER_DIR)
        _write_arrays(tmp, embeddings, bias, queries)
        pq.write_table(features.videos.to_table("video_id"), tmp / b.VIDEOS_FILE)
        features.save(tmp / b.VOCAB_DIR)
        (tmp / b.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        index_record = None
        if index_spec:
            if queries is not None and len(queries):
                index_queries, source = queries, "test-split user vectors"
            else:
                index_queries, source = mixture_queries(embeddings, max_queries), "random mixtures of embedding rows"
            video_ids = np.asarray([OOV_TOKEN, *features.videos.values.to_pylist()], dtype=object)
            spec = None if index_spec == "auto" else index_spec
            index, index_record = b.build_index(
                embeddings, bias, spec, target_recall, index_queries, source, video_ids=video_ids
            )
            index.write(tmp / index_record["file"])
        manifest = {
            "format_version": b.FORMAT_VERSION,
            "model_version": version,
            "model_hash": content_hash[:8],
            "created_at": datetime.now(UTC).isoformat(),
            "embedding_dim": dim,
            "n_videos": n_videos,
            "max_history": max_history,
            "max_tokens": max_tokens,
            "user_tower": {"signature": b.SIGNATURE_KEY, "inputs": sorted(b.TOWER_INPUTS), "output": b.USER_VECTOR},
            "metrics": metrics or {},
            "derived_from": None,
            "index": index_record,
        }
        b.write_manifest(tmp, manifest)
        b.load_bundle(tmp)  # the bundle must pass exactly the checks serving will run
        if held_out is not None and len(held_out["label"]):
            check = {k: v[:CHECK_EXAMPLES] for k, v in held_out.items()}
            _verify_tower(tmp / b.USER_TOWER_DIR, model, check, features)
    b.set_latest(out, version)
    return out / version


def _write_arrays(directory: Path, embeddings: np.ndarray, bias: np.ndarray, queries: np.ndarray | None) -> None:
    """embeddings.npy, bias.npy and (when there are held-out examples) queries.npy."""
    from recsys.bundle import BIAS_FILE, EMBEDDINGS_FILE, QUERIES_FILE

    np.save(directory / EMBEDDINGS_FILE, np.ascontiguousarray(embeddings, dtype=np.float32))
    np.save(directory / BIAS_FILE, np.ascontiguousarray(bias, dtype=np.float32))
    if queries is not None:
        np.save(directory / QUERIES_FILE, np.ascontiguousarray(queries, dtype=np.float32))


# ---------------------------------------------------------------------------------------------- CLI
def register(app: typer.Typer) -> None:
    """Add `recsys export` and `recsys index build` to the root CLI."""
    app.command("export")(export)
    index_app = typer.Typer(help="FAISS retrieval index of a model bundle.", no_args_is_help=True)
    index_app.command("build")(index_build)
    app.add_typer(index_app, name="index")


def export(
    run: Annotated[Path, typer.Option(help="a finished training run directory")],
    out: Annotated[Path, typer.Option(help="bundles directory: the bundle goes to OUT/<version>, OUT/latest -> it")],
    index_spec: Annotated[
        str | None, typer.Option(help="also build a FAISS index: a factory string, or 'auto' (by catalogue size)")
    ] = None,
    target_recall: Annotated[float, typer.Option(help="tune nprobe/efSearch to this recall@100")] = 0.95,
    force: Annotated[bool, typer.Option(help="export even a run that is not above popularity on validation")] = False,
) -> None:
    """Export a trained run as a versioned, verified model bundle and point OUT/latest at it."""
    path = export_bundle(run, out, index_spec=index_spec, target_recall=target_recall, force=force)
    manifest = json.loads((path / "manifest.json").read_text())
    typer.echo(f"exported {manifest['model_version']} ({manifest['n_videos']} videos, d={manifest['embedding_dim']})")
    typer.echo(f"-> {path}")


def index_build(
    bundle: Annotated[Path, typer.Option(help="a bundle directory, or a bundles directory (uses its latest)")],
    spec: Annotated[
        str | None, typer.Option(help="FAISS factory string (default by size: Flat / IVF{4√n},Flat / IVF,PQ)")
    ] = None,
    target_recall: Annotated[float, typer.Option(help="tune nprobe/efSearch to this recall@100 (0: no tuning)")] = 0.95,
    out: Annotated[Path | None, typer.Option(help="bundles directory for the new version (default: beside it)")] = None,
) -> None:
    """Build and tune a FAISS index for a bundle; publish it as a new bundle version."""
    from recsys.bundle import index_bundle

    path = index_bundle(bundle, spec, target_recall if target_recall > 0 else None, out=out)
    record = json.loads((path / "manifest.json").read_text())["index"]
    typer.echo(
        f"index {record['spec']} params {record['params']} recall@{record['recall_k']} {record['recall']:.4f} "
        f"({record['recall_queries']['source']}), built in {record['build_seconds']:.1f}s"
    )
    typer.echo(f"-> {path}")
