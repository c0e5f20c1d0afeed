"""The results index: generated text matches the committed README, every result is listed, every cited path exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.results_readme import README, RESULTS, RESULTS_DIR, generate, options, recorded_command

ROOT = Path(__file__).resolve().parents[2]
# Documents and build files that name result files by their path from the repository root (or from their folder).
CITING = ("README.md", "benchmarks/README.md", "docs/reference.md", "Makefile")


def test_committed_index_is_what_the_script_generates() -> None:
    assert README.read_text() == generate(), "stale: run `python -m benchmarks.results_readme`"


def test_every_result_json_is_listed_once_and_every_listed_one_exists() -> None:
    on_disk = sorted(p.relative_to(RESULTS_DIR).as_posix() for p in RESULTS_DIR.rglob("*.json"))
    listed = [r.path for r in RESULTS]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == on_disk


@pytest.mark.parametrize("entry", RESULTS, ids=lambda r: r.path)
def test_todays_command_keeps_every_recorded_option(entry) -> None:
    """Each option the run recorded (bar --json and --workdir) is in the command listed to reproduce it."""
    recorded = recorded_command(json.loads((RESULTS_DIR / entry.path).read_text()))
    assert (
        entry.command.startswith("python -m benchmarks.") and f"--json benchmarks/results/{entry.path}" in entry.command
    )
    if recorded is None:  # pipeline, index and softmax scaling record no command line
        return
    today = options(entry.command)
    missing = [pair for pair in options(recorded) if pair not in today]
    assert not missing, f"{entry.path}: recorded options missing from today's command: {missing}"


def test_options_pairs_flags_with_values_and_drops_output_paths() -> None:
    command = "benchmarks/quality.py --dataset ml-100k --exclude-history --json x.json --workdir /tmp/w --seed 3"
    assert options(command) == [("--dataset", "ml-100k"), ("--exclude-history", None), ("--seed", "3")]
    # A JSON value recorded unquoted matches the same value shell-quoted.
    quoted = options("""python -m benchmarks.sweep --point '{"hidden": [], "lr": 0.2}'""")
    unquoted = options('benchmarks/sweep.py --point {"hidden": [], "lr": 0.2}')
    assert quoted == unquoted == [("--point", "{hidden:[],lr:0.2}")]


@pytest.mark.parametrize("document", CITING)
def test_every_result_path_the_docs_cite_exists(document: str) -> None:
    text = (ROOT / document).read_text()
    cited = set(re.findall(r"benchmarks/results/[\w./-]+\.(?:json|md|npz|png)", text))
    cited |= {"benchmarks/" + p.lstrip("./") for p in re.findall(r"\(\.\./benchmarks/(results/[\w./-]+\.md)\)", text)}
    missing = sorted(p for p in cited if not (ROOT / p).is_file())
    assert not missing, f"{document} cites result files that do not exist: {missing}"
