"""Typed configuration: defaults, then a TOML file, then RECSYS_* environment variables (highest wins)."""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "RECSYS_CONFIG"
DEFAULT_CONFIG_FILE = Path("recsys.toml")
HistoryPooling = Literal["mean", "recency", "attention", "sequence"]
HISTORY_POOLINGS: tuple[str, ...] = get_args(HistoryPooling)
ADAGRAD_LEARNING_RATE = 0.3


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GeneratorConfig(_Section):
    """Size and shape of the synthetic watch log (the embedded default data source)."""

    users: int = Field(20_000, ge=1)
    videos: int = Field(50_000, ge=10)
    events: int = Field(1_000_000, ge=1)
    topics: int = Field(50, ge=2)
    seed: int = 42
    days: float = Field(60.0, gt=0, description="length of the simulated log")
    zipf_exponent: float = Field(1.0, gt=0, description="popularity ~ rank^-a")
    search_probability: float = Field(0.3, ge=0, le=1, description="chance a session starts with a search")
    chunk_events: int = Field(2_000_000, ge=1000, description="events generated and written per chunk")


class PipelineConfig(_Section):
    """Knobs of the rollback example pipeline."""

    engine: Literal["local", "spark"] = "local"
    split: Literal["time", "leave_last_out"] = Field(
        "time", description="time: global label-time boundaries; leave_last_out: each user's last watch is test"
    )
    max_history: int = Field(50, ge=1, le=10_000)
    max_search_tokens: int = Field(50, ge=0, le=10_000)
    max_examples_per_user: int = Field(
        200,
        ge=1,
        description="rollback examples kept per user and split (a seeded sample beyond it): 200 validated above 20 "
        "on the synthetic log (benchmarks/results/sweep/sweep_synthetic_cap200.md), where users average ~50 watches",
    )
    min_history: int = Field(1, ge=0, description="labels with fewer earlier watches are not examples")
    video_min_count: int = Field(1, ge=1)
    token_min_count: int = Field(2, ge=1)
    category_min_count: int = Field(1, ge=1)
    validation_start: datetime | None = Field(None, description="labels at or after this are validation")
    test_start: datetime | None = Field(None, description="labels at or after this are test")
    validation_days: float = Field(3.0, ge=0, description="used when validation_start is not given")
    test_days: float = Field(3.0, ge=0, description="used when test_start is not given")
    seed: int = 0
    workers: int = Field(0, ge=0, description="0 = one per core")
    partitions: int = Field(0, ge=0, description="0 = chosen from the input size")

    @field_validator("validation_start", "test_start")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("split boundaries must carry a time zone (e.g. 2024-01-31T00:00:00Z)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> PipelineConfig:
        if self.validation_start and self.test_start and self.validation_start > self.test_start:
            raise ValueError("validation_start must not be after test_start")
        return self


class ModelConfig(_Section):
    """Shape of the user tower and the output-embedding layer."""

    embedding_dim: int = Field(256, ge=8, description="d of the user vector and of each output-embedding row")
    video_input_dim: int = Field(64, ge=4, description="width of the watch-history input embeddings")
    token_input_dim: int = Field(32, ge=4)
    category_dim: int = Field(8, ge=2)
    hidden: list[int] = Field(default_factory=lambda: [1024, 512, 256], max_length=4)
    output_bias: bool = True
    dropout: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="dropout on the pooled features and after each hidden layer while training (off at serving): "
        "on the sparse Beauty log it kept validation recall@100 rising past the epoch where the undropped tower "
        "began to overfit (0.223 against 0.215)",
    )
    history_pooling: HistoryPooling = Field(
        "recency",
        description="how the watch history becomes one vector: a learned softmax over position-from-the-end (the "
        "default: it starts as the mean and won validation on every log measured), the paper's plain mean, a "
        "self-attention block then a masked mean, or sequence: a causal self-attention encoder (SASRec-style "
        "blocks) whose output at the most recent watch is the pooled history",
    )
    sequence_blocks: int = Field(2, ge=1, le=8, description="history_pooling=sequence: encoder blocks")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(width <= 0 for width in value):
            raise ValueError("hidden layer widths must be positive")
        return value


class TrainConfig(_Section):
    """The training job: loss, optimisation, sampling knobs, checkpoints and evaluation."""

    loss: Literal["full", "loguniform", "inbatch", "topk_random"] = "topk_random"
    batch_size: int = Field(1024, ge=1)
    epochs: int | None = Field(
        None,
        ge=1,
        description="epoch cap; None: train until early stopping ends the run (never before min_steps optimizer "
        "steps), at most max_auto_epochs",
    )
    min_steps: int = Field(
        1000,
        ge=0,
        description="with epochs=None, early stopping may not end a run before this many optimizer steps: a young "
        "model can sit on popularity's plateau for a few epochs of a small log",
    )
    max_auto_epochs: int = Field(
        100, ge=1, description="with epochs=None, the epoch cap (the report says when it bound while improving)"
    )
    optimizer: Literal["adam", "adagrad"] = Field(
        "adam",
        description="adam: lazy Adam (a table row's moments and value change only when the row is touched); "
        "adagrad: sparse Adagrad with the tail accumulator correction (the default before sparse logs showed it "
        "learning several times slower per epoch)",
    )
    learning_rate: float = Field(
        0.002,
        gt=0,
        description="step size; when not set it follows the optimizer: 0.002 for adam, 0.3 for adagrad (tuned on "
        "ML-100K and the demo log)",
    )
    seed: int = 0
    head: Literal["per_example", "shared"] = Field(
        "per_example",
        description="per_example: S_i = {y_i} + TopK(u_i), cost B*(K+m); shared: S = union over the batch, B*(|S|+m)",
    )
    top_k: int = Field(32, ge=1, description="K: head classes per example from the index")
    top_k_fetch: int = Field(64, ge=1, description="K' > K fetched from the stale index, re-scored exactly")
    uniform_samples: int = Field(2048, ge=1, description="m: uniform tail samples shared by the batch")
    refresh_every: int = Field(200, ge=1, description="R: steps between index refreshes")
    warmup_steps: int = Field(200, ge=0, description="uniform-only negatives before the top-K head starts")
    nprobe: int = Field(8, ge=1, description="IVF lists probed by the miner (the start when it is tuned)")
    index_target_recall: float | None = Field(
        0.95,
        gt=0,
        le=1,
        description="after each index build, nprobe := the smallest value (doubling, then bisection) whose top-K "
        "holds this share of the exact top-K on live queries (None: keep nprobe)",
    )
    index_max_nprobe: int = Field(64, ge=1, description="the tuning never probes more lists (bounds a step's cost)")
    refresh_drift: float | None = Field(
        0.05, ge=0, description="a refresh re-indexes the rows that moved > this x the RMS row norm (None: all rows)"
    )
    head_min_miss: float | None = Field(
        None,
        ge=0,
        le=1,
        description="top-K-plus-random: every refresh_every steps one batch's head is mined and checked, and the "
        "head is mined until the next check only if its entries' mean chance to be missed by the tail is at least "
        "this; otherwise those steps train on the tail alone, with no search, mining tower or re-scoring (None: "
        "always mine). A head the tail draws anyway changes the estimate of Z little for its whole cost",
    )
    exclude_history_from_head: bool = False
    tail_sampler: Literal["uniform", "loguniform", "loguniform_inbatch"] = Field(
        "loguniform",
        description="top-K-plus-random tail T: log-uniform over the popularity-ordered ids (weight count/(m*p), "
        "per-example head only; the default since it won on every log measured); loguniform_inbatch: the same m "
        "draws plus the batch's labels as free draws from the label distribution (balance-heuristic weights, "
        "per-example head only); or the design's uniform draw (weight n/m; the shared head's only tail)",
    )
    tail_accumulator_correction: bool = Field(
        True,
        description="sampled losses: a row drawn with probability q into the importance-weighted tail adds q*g^2 "
        "to its Adagrad accumulator, so its (1/q)-weighted gradient does not shrink its step by sqrt(q) against "
        "full softmax",
    )
    mining_prefetch: bool = Field(
        True,
        description="top-K-plus-random: search the index for the next batch on a worker thread while the current "
        "step trains (its user vectors one update older; re-scored with the current table as without prefetch)",
    )
    checkpoint_every: int = Field(500, ge=1)
    eval_max_examples: int = Field(20_000, ge=1, description="validation examples scored each epoch")
    eval_exclude_history: bool = Field(
        True,
        description="per-epoch validation as served: each example's history hidden, a re-watched label a miss",
    )
    patience: int = Field(2, ge=1, description="epochs without validation improvement before stopping")
    patience_steps: int = Field(
        400,
        ge=0,
        description="early stopping also waits this many optimizer steps without improvement (whichever is more "
        "epochs): on a small log two epochs are ~150 steps, well inside validation's epoch-to-epoch noise",
    )
    stop_margin_over_popularity: float | None = Field(
        0.05,
        ge=0,
        description="early stopping is armed only once validation recall@100 is this share above popularity's on "
        "the same examples: a run still on popularity's plateau has not started to learn (None: armed at once)",
    )
    diagnostics_every: int = Field(500, ge=1)
    shuffle_window: int = Field(200_000, ge=1, description="rows held for shuffling (bounded memory)")

    @model_validator(mode="before")
    @classmethod
    def _optimizer_learning_rate(cls, data: Any) -> Any:
        """A learning rate left unset follows the optimizer (Adagrad's accumulator wants a ~100x larger step)."""
        if isinstance(data, dict) and data.get("optimizer") == "adagrad" and data.get("learning_rate") is None:
            return {**data, "learning_rate": ADAGRAD_LEARNING_RATE}
        return data

    @model_validator(mode="before")
    @classmethod
    def _shared_head_tail(cls, data: Any) -> Any:
        """The shared head has only the uniform tail: it gets that one unless a tail is named."""
        if isinstance(data, dict) and data.get("head") == "shared" and "tail_sampler" not in data:
            return {**data, "tail_sampler": "uniform"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.tail_sampler != "uniform" and self.head != "per_example":
            raise ValueError(f"tail_sampler={self.tail_sampler!r} needs head='per_example'")
        if self.head_min_miss is not None and self.tail_sampler == "uniform":
            raise ValueError(
                "head_min_miss needs a log-uniform tail (tail_sampler 'loguniform' or 'loguniform_inbatch')"
            )
        if self.top_k_fetch < self.top_k:
            raise ValueError("top_k_fetch (K') must be >= top_k (K)")
        return self


ADMIN_TOKEN_ENV = "RECSYS_ADMIN_TOKEN"
MIN_SECRET_LENGTH = 16
# Values that people paste from examples; a service must never run with them.
_DEFAULT_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "admin", "token", "test", "default"})


def _env_secret(name: str) -> SecretStr | None:
    value = os.environ.get(name)
    return SecretStr(value) if value else None


def _check_secret(value: SecretStr | None, what: str) -> SecretStr | None:
    if value is None:
        return None
    text = value.get_secret_value()
    if text.strip().lower() in _DEFAULT_SECRETS or len(text) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{what} is a well-known default or shorter than {MIN_SECRET_LENGTH} characters; "
            'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return value


class ServeConfig(_Section):
    """The candidate service: bundle location, HTTP, Redis history, micro-batching, limits and admin access."""

    bundles: Path | None = Field(None, description="bundles directory (serves BUNDLES/latest) or one bundle")
    catalog: Path | None = Field(None, description="videos table (video_id, title): titles are added to answers")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes (share the memory-mapped index)")
    mmap: bool = Field(True, description="memory-map embeddings and the FAISS index so workers share one copy")
    verify_checksums: bool = Field(True, description="sha256 of every bundle file at load and reload")
    store: Literal["redis", "memory"] = Field(
        "redis", description="where watch history lives: redis, or an in-process store (one worker, demos)"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    redis_timeout_ms: float = Field(100.0, gt=0, description="socket and command timeout of one Redis call")
    breaker_failures: int = Field(3, ge=1, description="consecutive Redis failures that open the circuit")
    breaker_reset_seconds: float = Field(2.0, gt=0, description="how long an open circuit skips Redis")
    allow_degraded: bool = Field(True, description="ready and answering (degraded) while Redis is unreachable")
    history_cap: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="watches and search tokens kept per user in Redis (unset: as many of each as the serving bundle's "
        "tower reads, its max_history watches and max_search_tokens tokens, so a bundle trained on longer histories "
        "gets them served and the service hides the watches offline evaluation hides)",
    )
    history_ttl_seconds: int = Field(30 * 86_400, ge=1, description="a user's history expires after this idle time")
    key_prefix: str = Field("recsys", min_length=1, max_length=64)
    max_batch: int = Field(64, ge=1, le=4096, description="requests micro-batched into one tower call and search")
    max_wait_us: int = Field(1000, ge=0, le=1_000_000, description="how long a batch waits to fill")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_items: int = Field(1000, ge=1, description="most history, search, exclusion or event items in one request")
    max_id_length: int = Field(256, ge=1, description="longest user or video id accepted")
    max_query_length: int = Field(1000, ge=1, description="longest search query accepted")
    max_k: int = Field(1000, ge=1, le=1000, description="largest k a request may ask for (the API's own cap is 1000)")
    # One thread each: the tower's batches are small, and TensorFlow's default pools (one thread per core, in
    # every worker) fight the other workers for the cores; scale with workers. Measured in benchmarks/README.md.
    tf_intra_op_threads: int = Field(1, ge=0, le=256, description="TensorFlow threads per op (0: its default)")
    tf_inter_op_threads: int = Field(1, ge=0, le=256, description="TensorFlow ops run at once (0: its default)")
    poll_seconds: float = Field(0.0, ge=0, description="check BUNDLES/latest this often and reload (0: never)")
    admin_token: SecretStr | None = Field(
        default_factory=lambda: _env_secret(ADMIN_TOKEN_ENV),
        validate_default=True,
        description=f"bearer token of /admin/*; also read from ${ADMIN_TOKEN_ENV} (unset: admin disabled)",
    )

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_secret(value, "the admin token")

    @field_validator("redis_password")
    @classmethod
    def _redis_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in _DEFAULT_SECRETS:
            raise ValueError("the Redis password is a well-known default")
        return value


class Settings(BaseSettings):
    """All configuration sections; nested env vars use a double underscore (RECSYS_PIPELINE__MAX_HISTORY=30)."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_nested_delimiter="__", extra="forbid", toml_file=None)

    generate: GeneratorConfig = GeneratorConfig()
    pipeline: PipelineConfig = PipelineConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


_explicit_file: ContextVar[Path | None] = ContextVar("recsys_config_file", default=None)


def _config_path() -> Path | None:
    chosen = _explicit_file.get()
    if chosen is not None:
        return chosen
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_ENV}={explicit}: no such config file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from defaults, the TOML file (explicit, $RECSYS_CONFIG or ./recsys.toml) and env."""
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no such config file")
    token = _explicit_file.set(config_file)
    try:
        return Settings(**overrides)
    finally:
        _explicit_file.reset(token)


def parse_widths(text: str) -> list[int]:
    """Hidden-layer widths from a comma-separated command-line value ('' means depth 0)."""
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"hidden widths must be comma-separated integers, got {text!r}") from None


def with_overrides(section: _Section, **values: Any) -> Any:
    """Copy of a config section with the given (non-None) values replaced and re-validated."""
    changed = {k: v for k, v in values.items() if v is not None}
    # Only the explicitly set fields are carried over, so defaults that depend on others (the shared head's tail)
    # are derived again from the new values.
    return type(section).model_validate({**section.model_dump(exclude_unset=True), **changed})
