"""The model bundle: the versioned, checksummed directory that training exports and serving loads.

Layout of ``BUNDLES_DIR/<version>/`` (``version`` = UTC time + the model's short content hash, e.g.
``20261123T101512Z-1a2b3c4d``; versions sort in publication order)::

    manifest.json     format_version, model_version, dims, counts, metrics, index record, sha256 of every file
    config.json       model and training config, max_history / max_tokens / max_search_tokens, sizes
    user_tower/       SavedModel; signature "serving_default" takes raw features, returns "user_vector" [B, d]
    embeddings.npy    float32 [n, d]: the output-embedding table V (row i = video index i, row 0 = OOV)
    bias.npy          float32 [n]: the output bias b (zeros when the model has none)
    videos.parquet    index, video_id, count: the video vocabulary (row i = embedding row i)
    vocab/            every vocabulary and the numeric statistics (FeatureSpace.save)
    queries.npy       float32 [q, d] (optional): user vectors of held-out test examples, for index tuning
    index.faiss       (optional) FAISS index over [V_j, b_j], rows 1..n-1, ids = video indices

A bundle is immutable once published. Publishing writes a hidden sibling temp directory, renames it to its
version name, then moves the ``latest`` pointer: a symlink ``BUNDLES_DIR/latest -> <version>`` replaced
atomically by renaming a temp symlink over it (POSIX). A crash at any point leaves every published bundle
complete and ``latest`` naming one of them. ``index_bundle`` never edits a bundle in place: it publishes a copy
(unchanged files hard-linked) with the new index and manifest as a new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys.errors import RecsysError
from recsys.features import VOCAB_FILES, FeatureSpace
from recsys.index import IndexFileError, VideoIndex, default_spec, mixture_queries
from recsys.publish import publish_dir, publish_file, publish_json

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "BundleFormatError",
    "ChecksumError",
    "CorruptIndexError",
    "DimensionError",
    "EmbeddingValueError",
    "build_index",
    "check_embeddings",
    "file_checksums",
    "index_bundle",
    "latest_version",
    "list_versions",
    "load_bundle",
    "new_version",
    "resolve_bundle",
    "set_latest",
    "write_manifest",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
EMBEDDINGS_FILE = "embeddings.npy"
BIAS_FILE = "bias.npy"
VIDEOS_FILE = "videos.parquet"
VOCAB_DIR = "vocab"
USER_TOWER_DIR = "user_tower"
QUERIES_FILE = "queries.npy"
INDEX_FILE = "index.faiss"
LATEST = "latest"
SIGNATURE_KEY = "serving_default"
USER_VECTOR = "user_vector"
TOWER_INPUTS = {
    "history": "string [B, H]: watched video ids, oldest first, '' = padding; the last max_history are used",
    "search_tokens": "string [B, T]: tokens from recsys.features.tokenize, oldest first, '' = padding",
    "country": "string [B]",
    "device": "string [B]",
    "gender": "string [B]",
    "age": "float32 [B]: years, NaN = missing",
    "logged_in": "float32 [B]: 0 or 1",
    "example_age_days": "float32 [B]: 0 at serving",
}
REQUIRED_FILES = (
    CONFIG_FILE,
    EMBEDDINGS_FILE,
    BIAS_FILE,
    VIDEOS_FILE,
    f"{USER_TOWER_DIR}/saved_model.pb",
    *(f"{VOCAB_DIR}/{name}" for name in VOCAB_FILES.values()),
)
VERSION_RE = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{8})$")
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


class BundleError(RecsysError):
    """A bundle is unusable: serving must refuse it (and keep the one it has)."""


class BundleFormatError(BundleError):
    """The manifest is missing, malformed, or from a newer format than this code reads."""


class ChecksumError(BundleError):
    """A file is missing, unlisted, or its size/sha256 differs from the manifest."""


class DimensionError(BundleError):
    """Embedding, model, index or vocabulary dimensions disagree."""


class EmbeddingValueError(BundleError):
    """The embeddings or bias hold NaN or Inf."""


class CorruptIndexError(BundleError):
    """The index file cannot be read (truncated or corrupt)."""


# ---------------------------------------------------------------------------------------------- files
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def bundle_files(directory: Path) -> list[str]:
    """Relative POSIX paths of every regular file of a bundle except the manifest and hidden temp files."""
    out = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if path.is_file() and not _hidden(rel) and rel.as_posix() != MANIFEST_FILE:
            out.append(rel.as_posix())
    return sorted(out)


def file_checksums(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}} for every file the manifest must cover."""
    return {
        rel: {"sha256": sha256_file(directory / rel), "bytes": (directory / rel).stat().st_size}
        for rel in bundle_files(directory)
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Recompute the checksums of every file in directory and write manifest.json (last, atomically)."""
    out = {k: v for k, v in manifest.items() if k != "files"}
    out["format_version"] = int(manifest.get("format_version", FORMAT_VERSION))
    out["files"] = file_checksums(directory)
    publish_json(directory / MANIFEST_FILE, out)
    return out


# ---------------------------------------------------------------------------------------------- versions
def list_versions(bundles_dir: Path) -> list[str]:
    """Published bundle versions in a bundles directory, oldest first."""
    if not bundles_dir.is_dir():
        return []
    return sorted(p.name for p in bundles_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name))


def new_version(bundles_dir: Path, content_hash: str, now: datetime | None = None) -> str:
    """A version name "<UTC yyyymmddThhmmssZ>-<8 hex>" strictly later than every version already published."""
    short = content_hash[:8].lower()
    if not re.fullmatch(r"[0-9a-f]{8}", short):
        raise ValueError(f"content hash must start with 8 hex digits, got {content_hash!r}")
    stamp = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    existing = list_versions(bundles_dir)
    if existing:
        newest = datetime.strptime(VERSION_RE.match(existing[-1]).group(1), _TIME_FORMAT).replace(tzinfo=UTC)  # type: ignore[union-attr]
        if stamp <= newest:  # a clock step back or two exports within a second: stay monotonic
            stamp = newest + timedelta(seconds=1)
    return f"{stamp.strftime(_TIME_FORMAT)}-{short}"


def set_latest(bundles_dir: Path, version: str) -> None:
    """Point BUNDLES_DIR/latest at a published version atomically (temp symlink renamed over the old one)."""
    if not (bundles_dir / version / MANIFEST_FILE).is_file():
        raise BundleError(f"{bundles_dir / version}: not a published bundle")
    with publish_file(bundles_dir / LATEST) as tmp:
        os.symlink(version, tmp)


def latest_version(bundles_dir: Path) -> str | None:
    """The version BUNDLES_DIR/latest points at, or None."""
    link = bundles_dir / LATEST
    return os.readlink(link) if link.is_symlink() else None


def resolve_bundle(path: Path) -> Path:
    """The real directory of a bundle: path itself, or what its ``latest`` pointer names, symlinks resolved.

    Resolving once pins a load to one version even if ``latest`` moves while it reads.
    """
    path = Path(path)
    if not (path / MANIFEST_FILE).is_file() and (path / LATEST).exists():
        path = path / LATEST
    resolved = path.resolve()
    if not resolved.is_dir():
        raise BundleFormatError(f"{path}: no such bundle directory")
    return resolved


# ---------------------------------------------------------------------------------------------- checks
def check_embeddings(embeddings: np.ndarray, bias: np.ndarray | None, n_videos: int, dim: int, where: str) -> None:
    """Refuse embeddings/bias of the wrong shape or holding NaN/Inf."""
    if embeddings.ndim != 2 or embeddings.shape != (n_videos, dim):
        raise DimensionError(f"{where}: embeddings have shape {embeddings.shape}, expected ({n_videos}, {dim})")
    if bias is not None and bias.shape != (n_videos,):
        raise DimensionError(f"{where}: bias has shape {bias.shape}, expected ({n_videos},)")
    for name, arr in (("embeddings", embeddings), ("bias", bias)):
        if arr is None:
            continue
        # In row chunks: a memory-mapped 1M x 256 table is checked without a 256 MB temporary.
        bad = sum(int(np.count_nonzero(~np.isfinite(arr[lo : lo + 65_536]))) for lo in range(0, len(arr), 65_536))
        if bad:
            raise EmbeddingValueError(f"{where}: {name} hold {bad} NaN/Inf values")


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise BundleFormatError(f"{directory}: not a model bundle (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleFormatError(f"{path}: not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleFormatError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise BundleFormatError(f"bundle format {version} is newer than this code supports ({FORMAT_VERSION})")
    missing = [k for k in ("model_version", "embedding_dim", "n_videos", "files") if k not in manifest]
    if missing:
        raise BundleFormatError(f"{path}: manifest lacks {', '.join(missing)}")
    return manifest


def _verify_files(directory: Path, manifest: dict[str, Any], checksums: bool) -> None:
    listed: dict[str, dict[str, Any]] = manifest["files"]
    for rel in REQUIRED_FILES:
        if rel not in listed:
            raise ChecksumError(f"{directory}: the manifest does not list the required file {rel}")
    present = set(bundle_files(directory))
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise ChecksumError(f"{directory}: files not listed in the manifest: {', '.join(unlisted[:5])}")
    for rel, entry in listed.items():
        path = directory / rel
        if rel not in present:
            raise ChecksumError(f"{directory}: {rel} is listed in the manifest but missing")
        if path.stat().st_size != entry.get("bytes"):
            raise ChecksumError(f"{path}: size {path.stat().st_size} != {entry.get('bytes')} in the manifest")
        if checksums and sha256_file(path) != entry.get("sha256"):
            raise ChecksumError(f"{path}: sha256 does not match the manifest (file changed or corrupt)")


def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleFormatError(f"{path}: unreadable array ({exc})") from exc


def tower_signature(saved_model_dir: Path) -> tuple[set[str], list[int]]:
    """(input names, output shape) of the user tower's serving signature, read from saved_model.pb."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    except DecodeError as exc:
        raise BundleFormatError(f"{saved_model_dir}: unreadable SavedModel ({exc})") from exc
    signatures = proto.meta_graphs[0].signature_def if proto.meta_graphs else {}
    if SIGNATURE_KEY not in signatures or USER_VECTOR not in signatures[SIGNATURE_KEY].outputs:
        raise BundleFormatError(f"{saved_model_dir}: no '{SIGNATURE_KEY}' signature with a '{USER_VECTOR}' output")
    sig = signatures[SIGNATURE_KEY]
    shape = [int(d.size) for d in sig.outputs[USER_VECTOR].tensor_shape.dim]
    return set(sig.inputs.keys()), shape


def _check_tower(directory: Path, dim: int) -> None:
    try:
        inputs, shape = tower_signature(directory / USER_TOWER_DIR)
    except ImportError:  # a process without TensorFlow can still use the embeddings and the index
        log.warning("TensorFlow is not installed: the user tower's signature was not checked")
        return
    if inputs != set(TOWER_INPUTS):
        raise DimensionError(f"{directory}: user tower inputs {sorted(inputs)} != {sorted(TOWER_INPUTS)}")
    if len(shape) != 2 or shape[1] != dim:
        raise DimensionError(f"{directory}: user tower outputs shape {shape}, the embeddings have d={dim}")


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class Bundle:
    """A verified bundle in memory: manifest, config, vocabularies, embeddings, video ids and the index if any."""

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    features: FeatureSpace
    embeddings: np.ndarray
    bias: np.ndarray
    video_ids: np.ndarray  # object array of str; position i = video index i (0 = "[OOV]")
    index: VideoIndex | None
    queries: np.ndarray | None
    _tower: Any = field(default=None, repr=False)

    @property
    def model_version(self) -> str:
        """The bundle's version (its directory name)."""
        return str(self.manifest["model_version"])

    @property
    def embedding_dim(self) -> int:
        """d."""
        return int(self.manifest["embedding_dim"])

    @property
    def n_videos(self) -> int:
        """Rows of the embedding table including OOV."""
        return int(self.manifest["n_videos"])

    def user_tower(self) -> Callable[..., dict[str, Any]]:
        """Load the SavedModel and return its serving signature (raw features in, {"user_vector": [B, d]} out)."""
        import tensorflow as tf

        if self._tower is None:  # kept on the bundle: the signature needs the loaded object's lookup tables alive
            self._tower = tf.saved_model.load(str(self.path / USER_TOWER_DIR))
        return self._tower.signatures[SIGNATURE_KEY]

    def tuning_queries(self, limit: int = 1000, seed: int = 0) -> tuple[np.ndarray, str]:
        """User vectors for index tuning: the held-out test users' vectors, else random mixtures of embeddings."""
        if self.queries is not None and len(self.queries):
            return self.queries[:limit], "test-split user vectors"
        return mixture_queries(self.embeddings, limit, seed), "random mixtures of embedding rows"


def load_bundle(path: Path, *, verify_checksums: bool = True, load_index: bool = True, mmap: bool = False) -> Bundle:
    """Load and verify a bundle (or the one BUNDLES_DIR/latest names); raise a BundleError if it disagrees.

    ``mmap`` maps the embeddings, bias and index read-only from their files instead of copying them, so several
    serving processes share one copy in the page cache (bundles are immutable, so the files never change).

    Checks: format version supported; every file listed with matching size and sha256 (no unlisted file);
    embeddings [n, d] and bias [n] finite and matching the manifest and vocabulary; the user tower's signature
    outputs d; the index (if any) readable, of dimension d + 1, holding n - 1 vectors.
    """
    directory = resolve_bundle(path)
    manifest = _read_manifest(directory)
    _verify_files(directory, manifest, verify_checksums)
    n, dim = int(manifest["n_videos"]), int(manifest["embedding_dim"])
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise BundleFormatError(f"{directory / CONFIG_FILE}: not valid JSON ({exc})") from exc

    embeddings = _load_array(directory / EMBEDDINGS_FILE, mmap)
    bias = _load_array(directory / BIAS_FILE, mmap)
    if embeddings.dtype != np.float32 or bias.dtype != np.float32:
        raise BundleFormatError(f"{directory}: embeddings and bias must be float32")
    check_embeddings(embeddings, bias, n, dim, str(directory))

    videos = pq.read_table(directory / VIDEOS_FILE)
    if videos.num_rows != n or not np.array_equal(videos["index"].to_numpy(), np.arange(n)):
        raise DimensionError(f"{directory / VIDEOS_FILE}: {videos.num_rows} rows indexed 0..n-1 expected {n}")
    video_ids = np.asarray(videos["video_id"].to_pylist(), dtype=object)
    try:
        features = FeatureSpace.load(directory / VOCAB_DIR)
    except (ValueError, KeyError, OSError) as exc:
        raise BundleFormatError(f"{directory / VOCAB_DIR}: unreadable vocabularies ({exc})") from exc
    if len(features.videos) != n:
        raise DimensionError(f"{directory}: the video vocabulary has {len(features.videos)} entries, n_videos is {n}")
    _check_tower(directory, dim)

    queries = None
    if (directory / QUERIES_FILE).is_file():
        queries = _load_array(directory / QUERIES_FILE)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise DimensionError(f"{directory / QUERIES_FILE}: shape {queries.shape}, expected [q, {dim}]")

    index = None
    record = manifest.get("index")
    if record and load_index:
        index = _load_index(directory, record, embeddings, bias, video_ids, mmap)
    return Bundle(directory, manifest, config, features, embeddings, bias, video_ids, index, queries)


def _load_index(
    directory: Path,
    record: dict[str, Any],
    embeddings: np.ndarray,
    bias: np.ndarray,
    video_ids: np.ndarray,
    mmap: bool = False,
) -> VideoIndex:
    path = directory / record.get("file", INDEX_FILE)
    dim, n = embeddings.shape[1], embeddings.shape[0]
    try:
        index = VideoIndex.read(
            path,
            embeddings,
            bias,
            record["spec"],
            video_ids=video_ids,
            params=record["params"],
            mmap=mmap,
        )
    except IndexFileError as exc:
        raise CorruptIndexError(str(exc)) from exc
    except ValueError as exc:  # VideoIndex refuses an index whose dimension is not d + 1
        raise DimensionError(f"{path}: {exc}") from exc
    if index.ntotal != n - 1:
        raise DimensionError(f"{path}: the index holds {index.ntotal} vectors, expected n - 1 = {n - 1}")
    if int(index.index.d) != dim + 1:
        raise DimensionError(f"{path}: index dimension {index.index.d} != d + 1 = {dim + 1}")
    return index


# ---------------------------------------------------------------------------------------------- index build
def _copy_files(source: Path, target: Path, skip: set[str]) -> None:
    """Hard-link (or copy, across file systems) every bundle file of source into target, except skip."""
    for rel in bundle_files(source):
        if rel in skip:
            continue
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / rel, dest)
        except OSError:
            shutil.copy2(source / rel, dest)


def build_index(
    embeddings: np.ndarray,
    bias: np.ndarray | None,
    spec: str | None,
    target_recall: float | None,
    queries: np.ndarray,
    query_source: str,
    *,
    video_ids: np.ndarray | None = None,
    k: int = 100,
    seed: int = 0,
) -> tuple[VideoIndex, dict[str, Any]]:
    """Build an index (default spec by catalogue size), tune it to target_recall, and its manifest record.

    The queries are split in halves when there are at least 200: the parameter is chosen on one half and the
    recorded recall@k measured on the other (``target_recall`` None: default parameters, recall measured).
    """
    spec = spec or default_spec(*embeddings.shape)
    index = VideoIndex.build(embeddings, bias, spec, video_ids=video_ids, seed=seed)
    half = len(queries) // 2 if len(queries) >= 200 else 0
    tune_q, report_q = (queries[:half], queries[half:]) if half else (queries, queries)
    if target_recall is None:
        tuning: dict[str, Any] = {"parameter": index.tunable_parameter, "target": None}
    else:
        tuning = index.tune(tune_q, target_recall, k)
    recall = index.recall(report_q, k)
    record = {
        "file": INDEX_FILE,
        "spec": spec,
        "factory": index.factory,
        "params": index.params,
        "recall_k": k,
        "recall": round(recall, 4),
        "recall_queries": {"source": query_source, "count": len(report_q), "held_out_from_tuning": bool(half)},
        "tuning": tuning,
        "dim": int(index.index.d),
        **index.stats,
    }
    return index, record


def index_bundle(
    bundle_dir: Path,
    spec: str | None = None,
    target_recall: float | None = 0.95,
    *,
    k: int = 100,
    max_queries: int = 2000,
    seed: int = 0,
    out: Path | None = None,
    now: datetime | None = None,
) -> Path:
    """Build (and tune) a FAISS index for a bundle and publish it, with a new manifest, as a new version.

    The source bundle is verified and left untouched; the new version holds hard links to its files plus
    index.faiss, and becomes ``latest`` if the source was latest (or there was none). Tuning uses the bundle's
    held-out user vectors (queries.npy) when present. Returns the new bundle's path.
    """
    source = load_bundle(bundle_dir, load_index=False)
    bundles_dir = Path(out) if out is not None else source.path.parent
    queries, query_source = source.tuning_queries(max_queries, seed)
    index, record = build_index(
        source.embeddings,
        source.bias,
        spec,
        target_recall,
        queries,
        query_source,
        video_ids=source.video_ids,
        k=k,
        seed=seed,
    )
    model_hash = str(source.manifest.get("model_hash", "0" * 8))
    version = new_version(bundles_dir, model_hash, now)
    was_latest = latest_version(bundles_dir) in (None, source.path.name)
    with publish_dir(bundles_dir / version) as tmp:
        _copy_files(source.path, tmp, skip={INDEX_FILE})
        index.write(tmp / INDEX_FILE)
        manifest = {
            **source.manifest,
            "model_version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "derived_from": source.model_version,
            "index": record,
        }
        write_manifest(tmp, manifest)
        load_bundle(tmp)  # verify exactly what is about to be published
    if was_latest:
        set_latest(bundles_dir, version)
    return bundles_dir / version
