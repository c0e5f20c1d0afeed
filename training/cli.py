"""`recsys train` and `recsys evaluate`: the training layer's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli import settings_from
from recsys.config import HISTORY_POOLINGS, parse_widths, with_overrides


def register(app: typer.Typer) -> None:
    """Add the training commands to the root CLI."""
    app.command("train")(train)
    app.command("tune")(tune)
    app.command("evaluate")(evaluate)
    app.command("demo")(demo)


def train(
    ctx: typer.Context,
    examples: Annotated[Path, typer.Option(help="output directory of `recsys pipeline`")],
    out: Annotated[Path, typer.Option(help="run directory (checkpoints, report, embeddings)")],
    loss: Annotated[str | None, typer.Option(help="full | loguniform | inbatch | topk_random")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="step size (default: 0.002 with adam, 0.3 with adagrad)")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam (default) | adagrad")] = None,
    uniform_samples: Annotated[int | None, typer.Option(help="m: uniform tail samples")] = None,
    top_k: Annotated[int | None, typer.Option(help="K: head classes per example")] = None,
    head: Annotated[str | None, typer.Option(help="top-K head: per_example | shared")] = None,
    tail_sampler: Annotated[
        str | None, typer.Option(help="top-K-plus-random tail: uniform | loguniform | loguniform_inbatch")
    ] = None,
    head_min_miss: Annotated[
        float | None,
        typer.Option(help="top-K-plus-random: mine the head only while the tail would miss this share of it"),
    ] = None,
    hidden: Annotated[str | None, typer.Option(help="tower widths, e.g. 1024,512,256 (empty: linear)")] = None,
    embedding_dim: Annotated[int | None, typer.Option()] = None,
    video_input_dim: Annotated[int | None, typer.Option(help="width of the watch-history input embeddings")] = None,
    history_pooling: Annotated[
        str | None, typer.Option(help=f"history pooling: {' | '.join(HISTORY_POOLINGS)}")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="dropout rate of the tower while training")] = None,
    index_spec: Annotated[str | None, typer.Option(help="FAISS factory string of the miner's index")] = None,
    resume: Annotated[bool, typer.Option(help="continue a killed run from its last checkpoint")] = False,
    seed: Annotated[int | None, typer.Option()] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Train the two-tower model with one of the four softmax losses."""
    from training.train import train as run_train

    settings = settings_from(ctx)
    try:
        widths = None if hidden is None else parse_widths(hidden)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--hidden") from None
    model_cfg = with_overrides(
        settings.model,
        hidden=widths,
        embedding_dim=embedding_dim,
        video_input_dim=video_input_dim,
        history_pooling=history_pooling,
        dropout=dropout,
    )
    cfg = with_overrides(
        settings.train,
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        uniform_samples=uniform_samples,
        top_k=top_k,
        head=head,
        tail_sampler=tail_sampler,
        head_min_miss=head_min_miss,
        seed=seed,
    )
    report = run_train(examples, out, model_cfg, cfg, resume=resume, progress=not quiet, index_spec=index_spec)
    best = report["best_validation"]
    typer.echo(
        f"{cfg.loss}: {report['steps']} steps, best epoch {report['best_epoch']} validation recall@100 "
        f"{best.get('recall@100', float('nan')):.4f} (popularity {report['validation_popularity']['recall@100']:.4f})"
        f" -> {out}"
    )
    if not report["beats_popularity"]:
        typer.echo(
            "WARNING: validation recall@100 is not above popularity's: this run ranks no better than a count of "
            "watches, and `recsys export` refuses it unless --force",
            err=True,
        )


def tune(
    ctx: typer.Context,
    examples: Annotated[Path, typer.Option(help="output directory of `recsys pipeline`")],
    out: Annotated[Path, typer.Option(help="new directory: one run per grid point (the best kept), tuning.json")],
    grid: Annotated[
        list[str] | None,
        typer.Option(
            help="an axis FIELD=V1,V2,... of ModelConfig/TrainConfig fields (repeatable; default: "
            "learning rate x0.5 / x1 / x2 and the tower with its hidden layers / with none)"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="FIELD=VALUE fixed for every point (repeatable)")
    ] = None,
    loss: Annotated[str | None, typer.Option(help="full | loguniform | inbatch | topk_random")] = None,
    epochs: Annotated[int | None, typer.Option(help="epoch cap of every point (early stopping still applies)")] = None,
    budget_minutes: Annotated[
        float | None, typer.Option(help="start no further point after this long (the first always runs)")
    ] = None,
    keep_all: Annotated[bool, typer.Option(help="keep every point's run, not only the best")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Validation-only search over a config grid: train each point, keep the best validation recall@100."""
    from recsys.grid import apply_point, parse_grid, parse_overrides
    from training.tune import TUNING_FILE, default_axes
    from training.tune import tune as run_tune

    settings = settings_from(ctx)
    try:
        fixed = parse_overrides(set_ or [])
        model_cfg, cfg = apply_point(settings.model, with_overrides(settings.train, loss=loss, epochs=epochs), fixed)
    except (ValueError, KeyError) as err:
        raise typer.BadParameter(str(err), param_hint="--set") from None
    try:
        axes = parse_grid(grid) if grid else default_axes(model_cfg, cfg)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--grid") from None
    budget = None if budget_minutes is None else 60.0 * budget_minutes
    result = run_tune(examples, out, model_cfg, cfg, axes, budget_seconds=budget, keep_all=keep_all, progress=not quiet)
    record = result.record
    for point in record["points"]:
        figure = point.get("skipped") or f"validation recall@100 {point['validation']['recall@100']:.4f}"
        typer.echo(f"  {point['params']}: {figure}")
    typer.echo(
        f"chosen {record['chosen']}: validation recall@100 {record['chosen_validation']['recall@100']:.4f} "
        f"(popularity {record['validation_popularity']['recall@100']:.4f}), {record['points_run']} of "
        f"{len(record['points'])} points in {record['grid_s']:.0f} s -> {result.run} ({out / TUNING_FILE})"
    )
    typer.echo(f"next: recsys export --run {result.run} --out BUNDLES")


def evaluate(
    run: Annotated[Path, typer.Option(help="a training run directory")],
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    exclude_history: Annotated[
        bool,
        typer.Option(
            "--exclude-history/--no-exclude-history",
            help="hide each example's watched videos as the service does (a re-watched label is a miss); "
            "--no-exclude-history ranks them too",
        ),
    ] = True,
) -> None:
    """Full-catalogue Recall@K, NDCG@K and MAP of a run and of popularity on a split (as served by default)."""
    from training.evaluate import evaluate_run

    typer.echo(json.dumps(evaluate_run(run, split, exclude_history), indent=2))


def demo(
    out: Annotated[Path, typer.Option(help="where everything goes (must not exist or be empty)")] = Path("out/demo"),
    movielens: Annotated[Path | None, typer.Option(help="a MovieLens zip instead of the synthetic log")] = None,
    users: Annotated[int, typer.Option(help="synthetic users")] = 4000,
    videos: Annotated[int, typer.Option(help="synthetic videos")] = 8000,
    events: Annotated[int, typer.Option(help="synthetic watches")] = 320_000,
    epochs: Annotated[int, typer.Option(help="training epochs (the best is kept)")] = 6,
    port: Annotated[int, typer.Option(help="port of the service")] = 8000,
    host: Annotated[str, typer.Option(help="interface of the service")] = "127.0.0.1",
    serve_seconds: Annotated[
        float | None, typer.Option(help="stop the service after this long (default: run until Ctrl-C; 0: at once)")
    ] = None,
) -> None:
    """Data -> examples -> top-K-plus-random training -> bundle + index -> Redis + service answering, in one go."""
    from training.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=out,
        movielens=movielens,
        users=users,
        videos=videos,
        events=events,
        epochs=epochs,
        port=port,
        host=host,
        serve_seconds=serve_seconds,
    )
    run_demo(cfg, echo=typer.echo)
