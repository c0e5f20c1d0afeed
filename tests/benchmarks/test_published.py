"""Published HR@20 figures: shown beside ours for the Amazon Beauty and Sports logs only, labelled as other runs."""

from __future__ import annotations

from typing import Any

from benchmarks.published import PUBLISHED_HR20, format_published, published_for, published_section


def result_of(dataset: str, with_recall_at_20: bool = True) -> dict[str, Any]:
    """A minimal quality result: two methods on leave-last-out, whole earlier history hidden."""
    metrics = {"topk_random": {"recall@100": 0.3}, "ease": {"recall@100": 0.25}}
    if with_recall_at_20:
        metrics["topk_random"]["recall@20"] = 0.0712
        metrics["ease"]["recall@20"] = 0.0655
    return {"meta": {"dataset": dataset, "evaluation": "whole earlier history hidden"}, "leave_last_out": metrics}


def test_published_figures_are_the_iclrec_table_for_the_two_amazon_logs_only() -> None:
    assert published_for("events-Beauty") == {"SASRec": 0.089, "BERT4Rec": 0.098, "ICLRec": 0.106}
    assert published_for("events-Sports_and_Outdoors") == {"SASRec": 0.050, "BERT4Rec": 0.060, "ICLRec": 0.065}
    assert published_for("Beauty") == {}  # only an events log named after the file
    assert published_for("ml-100k") == {} and published_for("events-Toys") == {}
    assert set(PUBLISHED_HR20) == {"Beauty", "Sports_and_Outdoors"}


def test_published_section_puts_ours_beside_theirs_under_a_not_comparable_label() -> None:
    lines = published_section(result_of("events-Beauty"))
    assert lines[0] == "## Published figures (published, other runs, not comparable one-to-one)"
    text = "\n".join(lines)
    assert "ICLRec" in text and "Table 2" in text and "whole earlier history hidden" in text
    assert "| ours, this run | topk_random | 0.0712 |" in lines and "| ours, this run | ease | 0.0655 |" in lines
    assert "| published | ICLRec | 0.106 |" in lines and "| published | SASRec | 0.089 |" in lines
    assert lines.index("| ours, this run | ease | 0.0655 |") < lines.index("| published | SASRec | 0.089 |")


def test_no_published_section_for_other_logs_or_results_without_recall_at_20() -> None:
    assert published_section(result_of("ml-100k")) == []
    assert published_section(result_of("events-Beauty", with_recall_at_20=False)) == []
    no_leave_last_out = result_of("events-Beauty")
    no_leave_last_out["time_split"] = no_leave_last_out.pop("leave_last_out")
    assert published_section(no_leave_last_out) == []


def test_the_printed_block_labels_both_sources() -> None:
    text = format_published("events-Sports_and_Outdoors", result_of("x")["leave_last_out"])
    assert "not comparable one-to-one" in text.splitlines()[0]
    assert "ours, this run  topk_random  0.0712" in text and "published       ICLRec       0.065" in text
    assert format_published("ml-100k", result_of("x")["leave_last_out"]) == ""
