"""`recsys generate`, `recsys movielens` and `recsys pipeline`: the data layer's commands."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli import settings_from
from recsys.config import with_overrides


def register(app: typer.Typer) -> None:
    """Add the data commands to the root CLI."""
    app.command("generate")(generate)
    app.command("movielens")(movielens)
    app.command("pipeline")(pipeline)


def generate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="output directory (must not exist or be empty, unless --overwrite)")],
    users: Annotated[int | None, typer.Option(help="number of users")] = None,
    videos: Annotated[int | None, typer.Option(help="number of videos")] = None,
    events: Annotated[int | None, typer.Option(help="number of watch events")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    topics: Annotated[int | None, typer.Option(help="number of latent topics")] = None,
    days: Annotated[float | None, typer.Option(help="days the log spans")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier `recsys generate` output in --out")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Write a synthetic watch log (events, searches, users, videos and the planted ground truth)."""
    from pipelines.synthetic import generate as run_generate

    cfg = with_overrides(
        settings_from(ctx).generate,
        users=users,
        videos=videos,
        events=events,
        seed=seed,
        topics=topics,
        days=days,
    )
    summary = run_generate(cfg, out, progress=not quiet, overwrite=overwrite)
    typer.echo(f"wrote {summary['counts']['events']:,} events to {out}")


def movielens(
    zip_path: Annotated[Path, typer.Argument(help="a GroupLens MovieLens zip (100k, 1m or latest layout)")],
    out: Annotated[Path, typer.Option(help="output directory for the watch-log contract files")],
) -> None:
    """Convert a MovieLens zip into the watch-log contract (events, users, videos as Parquet)."""
    from pipelines.movielens import read_movielens, write_movielens

    tables = read_movielens(zip_path)
    counts = write_movielens(tables, out)
    typer.echo(f"MovieLens {tables.layout}: {counts}")


def pipeline(
    ctx: typer.Context,
    events: Annotated[
        Path,
        typer.Option(
            help="watch log: a Parquet, CSV or Arrow file, a directory from `generate`, a MovieLens zip, or a .txt "
            "(.txt.gz) sequence log of `USER ITEM ITEM ...` or `USER ITEM` lines in time order (position = days)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="output directory")],
    searches: Annotated[Path | None, typer.Option(help="search events table")] = None,
    users: Annotated[Path | None, typer.Option(help="users table")] = None,
    engine: Annotated[str | None, typer.Option(help="local (default) or spark")] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="time (default: global label-time windows) or leave_last_out (each user's last watch is test, "
            "the one before it validation)"
        ),
    ] = None,
    validation_start: Annotated[datetime | None, typer.Option(help="labels from here on are validation (UTC)")] = None,
    test_start: Annotated[datetime | None, typer.Option(help="labels from here on are test (UTC)")] = None,
    validation_days: Annotated[float | None, typer.Option(help="default validation length in days")] = None,
    test_days: Annotated[float | None, typer.Option(help="default test length in days")] = None,
    max_history: Annotated[int | None, typer.Option(help="most recent watches kept as history")] = None,
    max_examples_per_user: Annotated[int | None, typer.Option(help="cap per user and split")] = None,
    workers: Annotated[int | None, typer.Option(help="processes (0 = one per core)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Build rollback training examples with a time split, vocabularies, quarantine and a report."""
    from pipelines.pipeline import run_pipeline
    from pipelines.sources import resolve_inputs

    cfg = with_overrides(
        settings_from(ctx).pipeline,
        engine=engine,
        split=split,
        validation_start=_utc(validation_start),
        test_start=_utc(test_start),
        validation_days=validation_days,
        test_days=test_days,
        max_history=max_history,
        max_examples_per_user=max_examples_per_user,
        workers=workers,
    )
    inputs = resolve_inputs(events, searches=searches, users=users)
    report = run_pipeline(inputs, out, cfg, overwrite=overwrite, progress=not quiet)
    ex = report["examples"]
    typer.echo(
        f"{sum(report['rows_in'].values()):,} rows in, {report['quarantined_total']:,} quarantined; examples "
        f"train {ex['train']:,} / validation {ex['validation']:,} / test {ex['test']:,} "
        f"in {report['timings_s']['total']:.1f}s -> {out}"
    )


def _utc(moment: datetime | None) -> datetime | None:
    """Command-line times without a zone are taken as UTC."""
    from datetime import UTC

    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
