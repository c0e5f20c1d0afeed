"""The Spark engine: the local engine's validation, de-duplication and example transform, run by Apache Spark.

Every row-level decision is taken by the same pure functions the local engine calls (`validate_*` through
`mapInArrow`, `common.dedupe_partition`, `common.window_counts` and `build_examples` through
`groupBy(bucket).applyInArrow`), so the two engines cannot drift apart.

Plan: the inputs are read (Parquet and CSV by Spark, the rest by the project's readers), validated once and
shuffled once into user buckets (crc32 of the user id modulo the partition count, the local engine's own
partitioning), then cached; a summary gives the time range and the split boundaries. Phase A groups the cache
by bucket to de-duplicate and count the training window (the driver sums the counts and fits the
vocabularies), phase C groups it again to build the examples. A bucket holds every event of its users, which
is all the transform needs; one call per bucket rather than per user keeps the transform vectorised (a call
per user costs milliseconds of fixed overhead, minutes for 20,000 users).

Example shards and duplicate quarantines are written by the Python workers with pyarrow, exactly as the local
engine writes them, under deterministic names so that a retried task rewrites the same file. In local mode
that is the local disk; on a cluster the output directory must be on storage every worker can write to.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import pipelines.common as common
from pipelines.sources import Inputs, check_columns, format_of, iter_batches
from pipelines.transform import TransformContext, build_examples
from pipelines.validate import validate_searches, validate_users, validate_watches
from recsys.config import PipelineConfig
from recsys.errors import InputError, RecsysError
from recsys.features import CATEGORICAL_FEATURES, FeatureSpace
from recsys.logs import progress_enabled
from recsys.schemas import (
    QUARANTINE,
    SEARCH_EVENTS,
    SEARCH_REQUIRED,
    SPLITS,
    TIMESTAMP,
    USERS,
    USERS_REQUIRED,
    WATCH_EVENTS,
    WATCH_REQUIRED,
)

try:
    from pyspark import StorageLevel
    from pyspark.sql import DataFrame, GroupedData, SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise RecsysError("the spark engine needs pyspark: pip install 'recsys-two-tower[spark]'") from exc

# PySpark warns on every Arrow UDF that it has not certified pandas 3; the Arrow UDFs here never use pandas.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

KIND = "_kind"
BUCKET = "_bucket"
_WATCH, _SEARCH, _USER, _BAD = 0, 1, 2, 3
_KIND_SCHEMAS = {_WATCH: WATCH_EVENTS, _SEARCH: SEARCH_EVENTS, _USER: USERS}

# One row per input row after validation: a contract-typed good row of one kind (the union of the three contract
# schemas, other kinds' columns null) or a quarantined row (source, reason and the original row as JSON).
VALIDATED = pa.schema(
    [
        pa.field(KIND, pa.int8()),
        pa.field("user_id", pa.string()),
        pa.field("ts", TIMESTAMP),
        pa.field("video_id", pa.string()),
        pa.field("watch_seconds", pa.float64()),
        pa.field("query", pa.string()),
        *[pa.field(f.name, f.type) for f in USERS if f.name != "user_id"],
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("row", pa.string()),
    ]
)
_GOOD_COLUMNS = [f.name for f in VALIDATED if f.name not in ("source", "reason", "row")]

# What one bucket tells the driver after de-duplication: training-window counts (stat = videos, tokens or a
# categorical feature), one row per training user's age (stat = age), and duplicates (stat = quarantine).
STATS = pa.schema(
    [
        pa.field("stat", pa.string()),
        pa.field("source", pa.string()),
        pa.field("value", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("age", pa.float64()),
    ]
)
SPLIT_COUNTS = pa.schema([pa.field("split", pa.string()), pa.field("examples", pa.int64())])

Validator = Callable[[pa.Table], tuple[pa.Table, pa.Table]]
# For a CSV source, the column types other than text that the local engine's reader infers; None otherwise.
CsvTypes = dict[str, pa.DataType] | None

_PLAN: list[tuple[str, int, tuple[str, ...], Validator]] = [
    ("events", _WATCH, WATCH_REQUIRED, validate_watches),
    ("searches", _SEARCH, SEARCH_REQUIRED, validate_searches),
    ("users", _USER, USERS_REQUIRED, validate_users),
]
# pyarrow's CSV reader (the local engine's) turns these cells into nulls; Spark's only turns "" into null.
_CSV_NULLS = pa.array(pacsv.ConvertOptions().null_values, pa.string())
# Errors only. The org.apache.spark entry at the root's level also stops Spark's "Setting default log level"
# banner, which it prints whenever the shell logger's level differs from the root's.
_LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
logger.spark.name = org.apache.spark
logger.spark.level = error
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


# --- the session ---------------------------------------------------------------------------------------


def _driver_memory() -> str:
    """A quarter of the machine's memory for the local-mode JVM (driver and executor in one), 1 to 8 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "2g"
    return f"{max(1, min(8, total // 4 >> 30))}g"


@contextmanager
def spark_session(workers: int = 0, progress: bool = False, memory: str | None = None) -> Iterator[SparkSession]:
    """A local-mode session (UTC, Arrow on, quiet, no UI), stopped on exit; an already active one is reused."""
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active  # someone else (a test, a notebook) owns it and stops it
        return
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise RecsysError("the spark engine needs Java 17 or newer: put `java` on PATH or set JAVA_HOME")
    cores = workers or os.cpu_count() or 1
    # Python workers must run this interpreter (the one with pyarrow), not whatever `python3` is on PATH: local
    # mode reads the environment variable, the conf below serves cluster deployments.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    log_dir = Path(tempfile.mkdtemp(prefix="recsys-spark-"))
    log4j = log_dir / "log4j2.properties"
    log4j.write_text(_LOG4J)
    try:
        spark = (
            SparkSession.builder.master(f"local[{cores}]")
            .appName("recsys-pipeline")
            .config("spark.driver.memory", memory or _driver_memory())
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log4j}")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "32768")
            .config("spark.sql.shuffle.partitions", str(2 * cores))
            .config("spark.default.parallelism", str(2 * cores))
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "true" if progress_enabled(progress) else "false")
            .config("spark.pyspark.python", sys.executable)
            .config("spark.pyspark.driver.python", sys.executable)
            .config("spark.sql.warehouse.dir", str(log_dir / "warehouse"))
            .getOrCreate()
        )
    finally:
        log4j.unlink(missing_ok=True)  # log4j has read it by now
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


# --- reading --------------------------------------------------------------------------------------------


def _spark_readable(dtype: pa.DataType) -> bool:
    """Whether Spark reads a Parquet column of this Arrow type back as the same values pyarrow gives."""
    if pa.types.is_timestamp(dtype):
        return dtype.unit != "ns"  # Spark refuses TIMESTAMP(NANOS)
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_signed_integer(dtype)
        or dtype in (pa.uint8(), pa.uint16(), pa.uint32(), pa.float32(), pa.float64(), pa.date32())
        or pa.types.is_decimal128(dtype)
    )


def _spark_compatible(table: pa.Table) -> pa.Table:
    """Columns Spark cannot take from Arrow as they are, converted without changing a value (or failing)."""
    columns = []
    for column in table.columns:
        dtype = column.type
        if pa.types.is_dictionary(dtype):
            column = column.cast(dtype.value_type)
            dtype = column.type
        if pa.types.is_timestamp(dtype) and dtype.unit == "ns":
            column = column.cast(pa.timestamp("us", tz=dtype.tz))  # safe cast: raises rather than truncate
        elif dtype == pa.uint64():
            column = column.cast(pa.int64())
        elif dtype == pa.float16():
            column = column.cast(pa.float32())
        elif pa.types.is_null(dtype):
            column = column.cast(pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _from_arrow(spark: SparkSession, table: pa.Table | None) -> DataFrame | None:
    """A DataFrame of an in-memory table (MovieLens, Arrow IPC, Parquet Spark cannot read); None when empty."""
    if table is None or table.num_rows == 0:
        return None
    return spark.createDataFrame(_spark_compatible(table))


def _csv_types(path: Path, required: tuple[str, ...]) -> dict[str, pa.DataType]:
    """The types other than text that the local engine's CSV reader infers (from the file's first block)."""
    batches = iter_batches(path, required)
    first = next(batches, None)
    if isinstance(batches, Generator):
        batches.close()
    if first is None:
        return {}
    return {f.name: f.type for f in first.schema if not pa.types.is_string(f.type)}


def _read_source(spark: SparkSession, path: Path, required: tuple[str, ...]) -> tuple[DataFrame | None, CsvTypes]:
    """The raw rows of one input as a DataFrame (None when it holds none) and, for CSV, its inferred types."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    fmt = format_of(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if fmt in ("parquet", "dataset"):
        try:
            schema = pq.read_schema(path) if fmt == "parquet" else ds.dataset(path, format="parquet").schema
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise InputError(f"{path}: not a readable {fmt} file ({exc})") from exc
        check_columns(path, schema, required)
        if all(_spark_readable(f.type) for f in schema):
            reader = spark.read.option("recursiveFileLookup", "true") if path.is_dir() else spark.read
            return reader.parquet(str(path)), None
    elif fmt == "csv":
        delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
        # Every column as text; _raw_table then gives each the nulls and the type the local reader gives it.
        frame = spark.read.csv(
            str(path), header=True, inferSchema=False, sep=delimiter, quote='"', escape='"', multiLine=False
        )
        check_columns(path, pa.schema([(name, pa.string()) for name in frame.columns]), required)
        return frame, _csv_types(path, required)
    batches = list(iter_batches(path, required))
    return _from_arrow(spark, pa.Table.from_batches(batches) if batches else None), None


def _raw_sources(spark: SparkSession, inputs: Inputs) -> list[tuple[str, int, Validator, DataFrame | None, CsvTypes]]:
    """Every input that is present: (source, kind, validator, raw rows, CSV types)."""
    if inputs.movielens_zip is not None:
        from pipelines.movielens import read_movielens

        ml = read_movielens(inputs.movielens_zip)
        tables = {"events": ml.events, "users": ml.users}
        return [
            (source, kind, validate, _from_arrow(spark, tables[source]), None)
            for source, kind, _, validate in _PLAN
            if tables.get(source) is not None
        ]
    paths = {"events": inputs.events, "searches": inputs.searches, "users": inputs.users}
    out = []
    for source, kind, required, validate in _PLAN:
        path = paths[source]
        if path is not None:
            frame, csv_types = _read_source(spark, path, required)
            out.append((source, kind, validate, frame, csv_types))
    return out


# --- worker side ----------------------------------------------------------------------------------------


def _as_csv_reader(column: pa.Array, inferred: pa.DataType | None) -> pa.Array:
    """A CSV text column as pyarrow's reader gives it: its null markers as nulls, its inferred type."""
    column = pc.if_else(pc.is_in(column, value_set=_CSV_NULLS), pa.scalar(None, pa.string()), column)
    if inferred is None:
        return column
    if pa.types.is_null(inferred):
        return pa.nulls(len(column)) if column.null_count == len(column) else column
    return column.cast(inferred)  # a value the local reader cannot convert fails that engine too


def _raw_table(batch: pa.RecordBatch, csv_types: CsvTypes) -> pa.Table:
    """A raw batch as Spark hands it over, with the types (and, for CSV, the nulls) pyarrow's readers give."""
    columns = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        elif pa.types.is_large_binary(column.type):
            column = column.cast(pa.binary())
        if csv_types is not None and pa.types.is_string(column.type):
            column = _as_csv_reader(column, csv_types.get(name))
        columns.append(column)
    return pa.table(columns, names=batch.schema.names)


def _validated(source: str, kind: int, good: pa.Table, bad: pa.Table) -> pa.Table:
    """Good rows and quarantined rows of one batch in the VALIDATED layout."""

    def layout(table: pa.Table, row_kind: int, fill: dict[str, pa.Array]) -> pa.Table:
        n = table.num_rows
        columns = []
        for field in VALIDATED:
            if field.name == KIND:
                columns.append(pa.array(np.full(n, row_kind, dtype=np.int8)))
            elif field.name in fill:
                columns.append(fill[field.name])
            elif field.name in table.column_names:
                columns.append(table[field.name].cast(field.type))
            else:
                columns.append(pa.nulls(n, field.type))
        return pa.table(columns, schema=VALIDATED)

    good_rows = layout(good, kind, {"source": pa.array([source] * good.num_rows, pa.string())})
    return pa.concat_tables([good_rows, layout(bad, _BAD, {})])


def _validate_batches(
    source: str, kind: int, validate: Validator, csv_types: CsvTypes
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function validating one source with the shared validator."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            good, bad = validate(_raw_table(batch, csv_types))
            yield from _validated(source, kind, good, bad).to_batches()

    return run


def _clean_bucket(table: pa.Table) -> common.CleanPartition:
    """De-duplicate one bucket's validated rows with the shared function."""
    kinds = table[KIND].to_numpy()
    parts = [
        table.filter(pa.array(kinds == kind)).select(schema.names).cast(schema)
        for kind, schema in _KIND_SCHEMAS.items()
    ]
    return common.dedupe_partition(*parts)


def _stats_table(counts: common.WindowCounts, duplicates: dict[str, dict[str, int]]) -> pa.Table:
    """One bucket's training-window counts, training users' ages and duplicate counts as STATS rows."""
    parts: list[pa.Table] = []

    def add(stat: str, values: pa.Array, count: pa.Array, source: pa.Array | None, age: pa.Array | None) -> None:
        n = len(values)
        parts.append(
            pa.table(
                [
                    pa.array([stat] * n, pa.string()),
                    source if source is not None else pa.nulls(n, pa.string()),
                    values,
                    count,
                    age if age is not None else pa.nulls(n, pa.float64()),
                ],
                schema=STATS,
            )
        )

    named = [("videos", counts.videos), ("tokens", counts.tokens)]
    named += [(name, counts.categorical[name]) for name in CATEGORICAL_FEATURES]
    for stat, tables in named:
        for t in tables:
            add(
                stat,
                t["value"].combine_chunks().cast(pa.string()),
                t["count"].combine_chunks().cast(pa.int64()),
                None,
                None,
            )
    ages = np.concatenate(counts.ages) if counts.ages else np.zeros(0)
    add("age", pa.nulls(len(ages), pa.string()), pa.array(np.ones(len(ages), np.int64)), None, pa.array(ages))
    for source, reasons in duplicates.items():
        n = len(reasons)
        add(
            "quarantine",
            pa.array(list(reasons), pa.string()),
            pa.array(list(reasons.values()), pa.int64()),
            pa.array([source] * n, pa.string()),
            None,
        )
    return pa.concat_tables(parts)


BucketFn = Callable[[tuple[pa.Scalar, ...], pa.Table], pa.Table]


def _count_bucket(out: Path, train_end_us: int, split_mode: str) -> BucketFn:
    """The applyInArrow function of phase A: de-duplicate, quarantine duplicates, count the training window."""

    def run(key: tuple[pa.Scalar, ...], table: pa.Table) -> pa.Table:
        bucket = int(key[0].as_py())
        clean = _clean_bucket(table)
        if clean.quarantine is not None:
            common.write_parquet_atomic(clean.quarantine, out / "quarantine" / f"quarantine-{bucket:05d}.parquet")
        counts = common.window_counts(clean.watches, clean.searches, clean.users, train_end_us, split_mode)
        return _stats_table(counts, common.reason_counts(clean.quarantine))

    return run


def _transform_bucket(out: Path, ctx: TransformContext) -> Callable[[tuple[pa.Scalar, ...], pa.Table], pa.Table]:
    """The applyInArrow function of phase C: de-duplicate again, build the examples, write one shard per split."""

    def run(key: tuple[pa.Scalar, ...], table: pa.Table) -> pa.Table:
        bucket = int(key[0].as_py())
        clean = _clean_bucket(table)
        examples = build_examples(common.user_events(clean.watches, clean.searches, clean.users), ctx)
        written = common.write_example_shards(examples, out, bucket)
        counts = [written[split] for split in SPLITS]
        return pa.table([pa.array(SPLITS, pa.string()), pa.array(counts, pa.int64())], schema=SPLIT_COUNTS)

    return run


# --- driver side ----------------------------------------------------------------------------------------


def _bucketed(validated: DataFrame, partitions: int) -> DataFrame:
    """Rows with their user bucket (crc32 of the id, as the local engine partitions), bucket b in partition b."""
    crc = F.crc32(F.col("user_id").cast("binary"))
    bucket = F.when(F.col(KIND) != _BAD, F.pmod(crc, F.lit(partitions))).cast("int")
    frame = validated.withColumn(BUCKET, bucket)
    if hasattr(frame, "repartitionById"):  # pyspark >= 4.1: no two buckets share a partition
        return frame.repartitionById(partitions, BUCKET)
    return frame.repartition(partitions, BUCKET)  # same result; hashing few small ints can unbalance cores


def _validated_rows(spark: SparkSession, inputs: Inputs, partitions: int) -> tuple[DataFrame, dict[str, int]]:
    """Phase V plan: every input validated once into bucketed rows, cached (lazily); and the sources present."""
    spark_schema = from_arrow_schema(VALIDATED)
    frames = []
    rows_in: dict[str, int] = {}
    for source, kind, validate, raw, csv_types in _raw_sources(spark, inputs):
        rows_in[source] = 0
        if raw is not None:
            frames.append(raw.mapInArrow(_validate_batches(source, kind, validate, csv_types), spark_schema))
    if not frames:
        raise InputError(f"{inputs.events}: holds no watch events")
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    # The one shuffle of the job: later phases group by bucket on this cache without moving rows again.
    return _bucketed(union, partitions).persist(StorageLevel.MEMORY_AND_DISK), rows_in


def _summarise(
    validated: DataFrame, rows_in: dict[str, int], inputs: Inputs
) -> tuple[dict[str, dict[str, int]], tuple[int, int]]:
    """Phase V run: rows in per source (added to rows_in), quarantine reasons, and the range of watch times."""
    micros = F.when(F.col(KIND) == _WATCH, F.unix_micros("ts"))
    summary = (
        validated.groupBy("source", KIND, "reason")
        .agg(F.count(F.lit(1)).alias("n"), F.min(micros).alias("lo"), F.max(micros).alias("hi"))
        .collect()
    )
    reasons: dict[str, dict[str, int]] = {}
    lo, hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for row in summary:
        rows_in[row["source"]] += row["n"]
        if row[KIND] == _BAD:
            common.merge_reason_counts(reasons, {row["source"]: {row["reason"]: row["n"]}})
        elif row[KIND] == _WATCH:
            lo, hi = min(lo, row["lo"]), max(hi, row["hi"])
    if rows_in.get("events", 0) == 0:
        raise InputError(f"{inputs.events}: holds no watch events")
    if hi < lo:
        raise InputError(f"{inputs.events}: every one of {rows_in['events']} watch events was quarantined")
    return reasons, (lo, hi)


def _fit_from_stats(stats: pa.Table, cfg: PipelineConfig) -> tuple[FeatureSpace, dict[str, dict[str, int]]]:
    """Fit the vocabularies from the summed STATS rows, exactly as the local engine does from its partitions."""
    totals = common.WindowCounts()

    def counts_of(stat: str) -> pa.Table:
        rows = stats.filter(pc.equal(stats["stat"], stat))
        return pa.table(
            {"value": rows["value"].cast(pa.string()), "count": rows["count"].cast(pa.int64())}
        ).combine_chunks()

    totals.videos.append(counts_of("videos"))
    totals.tokens.append(counts_of("tokens"))
    for name in CATEGORICAL_FEATURES:
        totals.categorical[name].append(counts_of(name))
    ages = stats.filter(pc.equal(stats["stat"], "age"))
    totals.ages.append(
        np.repeat(
            ages["age"].to_numpy(zero_copy_only=False).astype(np.float64),
            ages["count"].to_numpy(zero_copy_only=False),
        )
    )
    duplicates: dict[str, dict[str, int]] = {}
    dup = stats.filter(pc.equal(stats["stat"], "quarantine")).to_pylist()
    for row in dup:
        common.merge_reason_counts(duplicates, {row["source"]: {row["value"]: int(row["count"])}})
    return common.fit_features(totals, cfg), duplicates


def _fit_vocabulary(
    grouped: GroupedData, out: Path, train_end_us: int, cfg: PipelineConfig
) -> tuple[FeatureSpace, dict[str, dict[str, int]]]:
    """Phase A: de-duplicate each bucket (duplicates to quarantine), sum the counts, fit the feature space."""
    stats = (
        grouped.applyInArrow(_count_bucket(out, train_end_us, cfg.split), from_arrow_schema(STATS))
        .groupBy("stat", "source", "value", "age")
        .agg(F.sum("count").alias("count"))
        .toArrow()
    )
    return _fit_from_stats(stats, cfg)


def _write_examples(grouped: GroupedData, out: Path, ctx: TransformContext) -> dict[str, int]:
    """Phase C: the example transform on each bucket, one shard per split and bucket; examples per split."""
    for split in SPLITS:
        (out / split).mkdir()
    written = (
        grouped.applyInArrow(_transform_bucket(out, ctx), from_arrow_schema(SPLIT_COUNTS))
        .groupBy("split")
        .agg(F.sum("examples").alias("examples"))
        .collect()
    )
    return dict.fromkeys(SPLITS, 0) | {row["split"]: int(row["examples"]) for row in written}


@contextmanager
def _run_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Session SQL settings for the duration of one run, put back afterwards (the session may be shared)."""
    previous: dict[str, str | None] = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def run_spark(inputs: Inputs, tmp: Path, cfg: PipelineConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline with Spark (local mode), writing what run_local writes under tmp; returns the report."""
    from pipelines.local import choose_partitions

    workers = cfg.workers or os.cpu_count() or 1
    partitions = choose_partitions(inputs, cfg, workers)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    (tmp / "quarantine").mkdir(parents=True)
    settings = {
        "spark.sql.shuffle.partitions": str(partitions),
        # Adaptive execution would hide the cache's bucket partitioning from the grouped phases (one more
        # shuffle each); the shuffles here are sized by hand anyway.
        "spark.sql.adaptive.enabled": "false",
        # The cache is read twice, soon after it is built: compressing it costs more than it saves.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
    }
    with spark_session(workers, progress=progress) as spark, _run_conf(spark, settings):
        version = spark.version
        timings["session"] = time.perf_counter() - start  # JVM start, unless a session was active already
        t0 = time.perf_counter()
        validated, rows_in = _validated_rows(spark, inputs, partitions)
        try:
            reasons, (lo, hi) = _summarise(validated, rows_in, inputs)
            invalid = validated.filter(F.col(KIND) == _BAD).select(*QUARANTINE.names).toArrow()
            if invalid.num_rows:
                pq.write_table(invalid.cast(QUARANTINE), tmp / "quarantine" / "invalid.parquet")
            timings["read_validate_partition"] = time.perf_counter() - t0

            t1 = time.perf_counter()
            bounds = common.split_boundaries(cfg, lo, hi)
            grouped = validated.filter(F.col(KIND) != _BAD).select(*_GOOD_COLUMNS, BUCKET).groupBy(BUCKET)
            features, duplicates = _fit_vocabulary(grouped, tmp, bounds.validation_start_us, cfg)
            common.merge_reason_counts(reasons, duplicates)
            features.save(tmp / "vocab")
            timings["dedupe_vocabulary"] = time.perf_counter() - t1

            t2 = time.perf_counter()
            examples = _write_examples(grouped, tmp, common.transform_context(features, bounds, cfg))
            timings["transform_write"] = time.perf_counter() - t2
        finally:
            validated.unpersist()
    timings["total"] = time.perf_counter() - start
    return common.report("spark", cfg, rows_in, reasons, examples, bounds, features, timings) | {
        "partitions": partitions,
        "workers": workers,
        "spark_version": version,
    }
