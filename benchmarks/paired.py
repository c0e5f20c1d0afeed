"""Paired comparison of methods from two quality runs on the same test examples (e.g. today's model against
the baselines of an earlier run), refused unless both runs ranked the very same examples.

    python -m benchmarks.paired --a NEW.json:topk_random --b OLD.json:ease --b OLD.json:als --json OUT.json

Each run's per-example ranks come from the `<stem>.ranks.npz` beside its JSON. The two runs must share the protocol's
test examples in the same order: checked by their test-user groups and by popularity's ranks (deterministic from the
training labels), which must be identical. Intervals: the paired user bootstrap of `recsys.stats.compare`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.output import command_line, log, ranks_file, write_json
from recsys.stats import compare

METRICS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "map")


def _ref(text: str) -> tuple[Path, str]:
    """'PATH.json:method' -> (path, method)."""
    path, sep, method = text.rpartition(":")
    if not sep or not path or not method:
        raise argparse.ArgumentTypeError(f"expected RESULT.json:METHOD, got {text!r}")
    return Path(path), method


def load_ranks(path: Path, protocol: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One quality run's per-example ranks by method, and its test-user groups, for a protocol."""
    prefix = f"{protocol}/"
    with np.load(ranks_file(path)) as npz:
        ranks = {k[len(prefix) :]: npz[k] for k in npz.files if k.startswith(prefix)}
        groups = npz[f"groups/{protocol}"] if f"groups/{protocol}" in npz.files else None
    if not ranks or groups is None:
        raise ValueError(f"{ranks_file(path)} has no ranks for protocol {protocol!r}")
    return ranks, groups


def same_examples(a: tuple[dict[str, np.ndarray], np.ndarray], b: tuple[dict[str, np.ndarray], np.ndarray]) -> bool:
    """Whether two runs ranked the same test examples in the same order (same users, same popularity ranks)."""
    (ranks_a, groups_a), (ranks_b, groups_b) = a, b
    if "popularity" not in ranks_a or "popularity" not in ranks_b:
        return False
    return bool(np.array_equal(groups_a, groups_b) and np.array_equal(ranks_a["popularity"], ranks_b["popularity"]))


def paired(a: tuple[Path, str], others: Sequence[tuple[Path, str]], protocol: str) -> dict[str, Any]:
    """The paired user bootstrap of method a minus each other method, per metric, on the runs' shared examples."""
    runs = {p: load_ranks(p, protocol) for p in {a[0], *(o[0] for o in others)}}
    base = runs[a[0]]
    for path, run in runs.items():
        if not same_examples(base, run):
            raise ValueError(f"{path} did not rank the same {protocol} test examples as {a[0]}")
    names = {ref: f"{ref[1]} ({ref[0].stem})" for ref in (a, *others)}
    ranks = {names[ref]: runs[ref[0]][0][ref[1]] for ref in (a, *others)}
    pairs = [(names[a], names[o]) for o in others]
    result = compare(ranks, base[1], pairs)
    return {pair: {m: by_metric[m] for m in METRICS} for pair, by_metric in result.items()}


def pair_line(pair: str, recall: dict[str, Any]) -> str:
    """One pair's recall@100 difference, paired interval and p-value, as the command and the results index print it."""
    return (
        f"{pair}: recall@100 {recall['mean_diff']:+.4f}, 95% interval [{recall['low']:+.4f}, {recall['high']:+.4f}], "
        f"p {recall['p_value']:.3f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print each pair's recall@100 difference and interval; write them all to --json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=_ref, required=True, help="RESULT.json:METHOD compared with every --b")
    parser.add_argument("--b", type=_ref, action="append", required=True, help="RESULT.json:METHOD (repeatable)")
    parser.add_argument("--protocol", default="time_split")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    result = paired(args.a, args.b, args.protocol)
    for pair, by_metric in result.items():
        log(pair_line(pair, by_metric["recall@100"]))
    write_json({"command": command_line("benchmarks.paired", argv), "protocol": args.protocol, **result}, args.json)


if __name__ == "__main__":
    main()
