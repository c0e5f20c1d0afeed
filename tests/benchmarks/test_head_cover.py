"""The head-coverage probe reads the trainer's mined heads and the tail's chance to draw each entry."""

from __future__ import annotations

import json

import pytest

from benchmarks import head_cover


@pytest.mark.slow
@pytest.mark.parametrize("tail_sampler", ["loguniform", "loguniform_inbatch"])
def test_head_cover_reports_every_check_after_the_index_exists(tmp_path, tail_sampler):
    out = tmp_path / "cover.json"
    argv = ["--dataset", "synthetic", "--videos", "3000", "--users", "400", "--events", "40000"]
    argv += ["--checks", "1,3,6", "--warmup", "2", "--tail-sampler", tail_sampler]
    argv += ["--workdir", str(tmp_path / "work"), "--json", str(out)]
    head_cover.main(argv)
    result = json.loads(out.read_text())
    assert [c["step"] for c in result["checks"]] == [3, 6]  # step 1 is before the first index build
    assert result["train"]["tail_sampler"] == tail_sampler
    batch, k = result["train"]["batch_size"], result["train"]["top_k"]
    for check in result["checks"]:
        assert 1 <= check["distinct_head_rows"] <= min(batch * k, result["videos_in_vocabulary"])
        assert 0 < check["mean_draw_chance"] <= 1 and 0 <= check["share_drawn_at_least_half"] <= 1
        assert 0 <= check["median_head_id"] <= check["max_head_id"] < result["videos_in_vocabulary"]
