"""Service settings: the admin token comes from RECSYS_ADMIN_TOKEN or the nested setting; defaults are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.config import load_settings


def test_admin_token_from_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_SERVE__ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("RECSYS_ADMIN_TOKEN", raising=False)
    assert load_settings().serve.admin_token is None
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "a" * 24)
    token = load_settings().serve.admin_token
    assert token is not None and token.get_secret_value() == "a" * 24
    assert "aaaa" not in repr(load_settings().serve)
    monkeypatch.setenv("RECSYS_SERVE__ADMIN_TOKEN", "b" * 24)
    token = load_settings().serve.admin_token
    assert token is not None and token.get_secret_value() == "b" * 24


@pytest.mark.parametrize("value", ["changeme", "secret", "short-token"])
def test_default_or_short_secrets_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", value)
    with pytest.raises(ValidationError, match="admin token"):
        load_settings()


def test_serve_knobs_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SERVE__MAX_BATCH", "16")
    monkeypatch.setenv("RECSYS_SERVE__STORE", "memory")
    cfg = load_settings().serve
    assert cfg.max_batch == 16 and cfg.store == "memory"
    monkeypatch.setenv("RECSYS_SERVE__MAX_BATCH", "0")
    with pytest.raises(ValidationError):
        load_settings()
