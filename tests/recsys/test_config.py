"""Configuration precedence and validation."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

from recsys.config import PipelineConfig, TrainConfig, load_settings, with_overrides


def test_defaults_file_env_and_overrides(tmp_path, monkeypatch):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[pipeline]\nmax_history = 7\nmax_examples_per_user = 3\n[generate]\nusers = 11\n")
    monkeypatch.setenv("RECSYS_PIPELINE__MAX_EXAMPLES_PER_USER", "5")
    settings = load_settings(cfg_file)
    assert settings.pipeline.max_history == 7
    assert settings.pipeline.max_examples_per_user == 5
    assert settings.generate.users == 11
    assert with_overrides(settings.pipeline, max_history=9, min_history=None).max_history == 9


def test_invalid_values_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ValidationError):
        PipelineConfig(max_history=0)
    with pytest.raises(ValidationError, match="time zone"):
        PipelineConfig(test_start=datetime(2026, 1, 1))
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[pipeline]\nno_such_knob = 1\n")
    with pytest.raises(ValidationError):
        load_settings(cfg_file)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_tail_sampler_defaults_to_loguniform_except_under_the_shared_head():
    assert TrainConfig().tail_sampler == "loguniform"
    assert TrainConfig(head="shared").tail_sampler == "uniform"  # the shared head has only the uniform tail
    with pytest.raises(ValidationError, match="needs head='per_example'"):
        TrainConfig(head="shared", tail_sampler="loguniform")  # named explicitly: refused, not silently changed
    # with_overrides derives the dependent default again from the new head, and keeps what was set explicitly.
    assert with_overrides(TrainConfig(), head="shared").tail_sampler == "uniform"
    assert with_overrides(TrainConfig(tail_sampler="uniform"), top_k=8).tail_sampler == "uniform"
    changed = with_overrides(TrainConfig(learning_rate=0.5), top_k=8)
    assert (changed.learning_rate, changed.top_k, changed.tail_sampler) == (0.5, 8, "loguniform")
