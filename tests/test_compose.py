"""docker-compose.yml resolved by `docker-compose config` / `docker compose config`, and the Dockerfiles read as text.

The compose checks need a compose client (Debian's `docker-compose`, or the `docker compose` plugin) but no Docker
engine: `config` only parses, validates and interpolates the file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
SECRET_VARS = ("REDIS_PASSWORD", "RECSYS_ADMIN_TOKEN")
JOBS = ("generate", "pipeline", "train", "export")
GPU_SERVICES = ("train-gpu", "export-gpu")


# ---------------------------------------------------------------------------------------------- compose client
def _compose_client() -> list[str] | None:
    """The compose command line available here: the v2 plugin first, then the standalone docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


COMPOSE = _compose_client()
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="neither `docker-compose` nor `docker compose` is installed (Debian: apt-get install docker-compose)",
)


def _run_config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`config` on the repository's compose file with the gpu profile on, secrets only from `env_file`."""
    assert COMPOSE is not None
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith("COMPOSE_")}
    command = [*COMPOSE, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "--profile", "gpu", "config", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def test_secrets() -> dict[str, str]:
    return {name: f"test-{name.lower()}-{secrets.token_hex(8)}" for name in SECRET_VARS}


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory, test_secrets: dict[str, str]) -> dict[str, Any]:
    """The resolved compose model: JSON from the v2 plugin, else the standalone client's YAML parsed with PyYAML.

    (Debian's docker-compose 1.x has no `config --format json`: it prints its help and exits 0.)
    """
    if COMPOSE is None:
        pytest.skip("no compose client")
    env_file = tmp_path_factory.mktemp("compose") / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in test_secrets.items()))
    if COMPOSE[-1] == "compose":
        result = _run_config(env_file, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    result = _run_config(env_file)
    assert result.returncode == 0, result.stderr
    import yaml  # the dev extra's pyyaml

    return yaml.safe_load(result.stdout)


def _volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) for both spellings: 'src:dst[:mode]' (v1) and the long form (v2)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, mode == ["ro"])
        else:
            mounts[volume["target"]] = (volume.get("source", ""), bool(volume.get("read_only", False)))
    return mounts


def _healthcheck_test(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", [])
    return " ".join(test) if isinstance(test, list) else str(test)


def _walk(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every string leaf of the model with its path."""
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _walk(value, (*path, str(key)))]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _walk(value, (*path, str(i)))]
    return [(path, str(node))]


# ---------------------------------------------------------------------------------------------- resolved model
@needs_compose
def test_config_resolves_with_every_service(resolved: dict[str, Any]) -> None:
    assert {"redis", *JOBS, "api", *GPU_SERVICES} <= set(resolved["services"])
    assert {"data", "redis-data"} <= set(resolved["volumes"])


@needs_compose
def test_redis_is_persistent_guarded_and_health_checked(resolved: dict[str, Any]) -> None:
    redis = resolved["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command
    assert "--requirepass" in command
    source, read_only = _volumes(redis)["/data"]
    assert source == "redis-data" and not read_only  # a named volume, not a bind mount
    test = _healthcheck_test(redis)
    assert "redis-cli" in test and "ping" in test and "REDIS_PASSWORD" in test


@needs_compose
def test_jobs_share_the_data_volume_and_run_in_order(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for job in (*JOBS, *GPU_SERVICES):
        assert _volumes(services[job])["/data"] == ("data", False), job
        assert services[job].get("restart", "no") == "no", job
    chain = {"pipeline": "generate", "train": "pipeline", "export": "train", "train-gpu": "pipeline"}
    chain["export-gpu"] = "train-gpu"
    for job, before in chain.items():
        assert services[job]["depends_on"][before]["condition"] == "service_completed_successfully", job
    assert _volumes(services["api"])["/data"][0] == "data"


@needs_compose
def test_jobs_run_the_documented_commands(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    expected = {
        "generate": "recsys generate --out /data/log",
        "pipeline": "recsys pipeline --events /data/log --out /data/examples",
        "train": "recsys train --examples /data/examples --out /data/run --loss topk_random",
        "export": "recsys export --run /data/run --out /data/bundles --index-spec auto",
        "train-gpu": "recsys train --examples /data/examples --out /data/run-gpu",
        "export-gpu": "recsys export --run /data/run-gpu --out /data/bundles --index-spec auto",
    }
    for job, command in expected.items():
        line = " ".join(services[job]["command"])
        assert command in re.sub(r"\s+", " ", line), job


@needs_compose
def test_api_waits_for_healthy_redis_and_a_bundle(resolved: dict[str, Any]) -> None:
    api = resolved["services"]["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert api["command"][:3] == ["serve", "--bundles", "/data/bundles"]
    assert [int(p["target"]) for p in api["ports"]] == [8000]
    assert [int(p["published"]) for p in api["ports"]] == [8000]
    assert "/readyz" in _healthcheck_test(api)
    assert api["environment"]["RECSYS_SERVE__REDIS_URL"] == "redis://redis:6379/0"


@needs_compose
def test_gpu_profile_reserves_nvidia_devices(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in GPU_SERVICES:
        service = services[name]
        assert service["profiles"] == ["gpu"], name
        assert service["build"]["dockerfile"].endswith("docker/Dockerfile.gpu"), name
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert device["count"] in ("all", -1), name  # v2 writes `all` as -1
    for name in ("redis", *JOBS, "api"):
        assert not services[name].get("profiles"), name  # the default stack needs no GPU


@needs_compose
def test_secrets_reach_only_the_environment(resolved: dict[str, Any], test_secrets: dict[str, str]) -> None:
    """The secrets from the env file land in `environment` entries only (no command line, no health check)."""
    services = resolved["services"]
    assert services["api"]["environment"]["RECSYS_SERVE__REDIS_PASSWORD"] == test_secrets["REDIS_PASSWORD"]
    assert services["api"]["environment"]["RECSYS_ADMIN_TOKEN"] == test_secrets["RECSYS_ADMIN_TOKEN"]
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == test_secrets["REDIS_PASSWORD"]
    for path, value in _walk(resolved):
        if any(secret in value for secret in test_secrets.values()):
            assert path[0] == "services" and path[2] == "environment", path


@needs_compose
@pytest.mark.parametrize("missing", SECRET_VARS)
def test_config_refuses_to_resolve_without_a_secret(tmp_path: Path, missing: str) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}=x{secrets.token_hex(4)}\n" for k in SECRET_VARS if k != missing))
    result = _run_config(env_file)
    assert result.returncode != 0
    assert missing in result.stderr


# ---------------------------------------------------------------------------------------------- the file as text
def _compose_text_without_comments() -> str:
    return "\n".join(
        line.split(" #")[0] for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#")
    )


def test_compose_file_holds_no_literal_secret() -> None:
    text = _compose_text_without_comments()
    secret_keys = ("REDIS_PASSWORD", "RECSYS_ADMIN_TOKEN", "RECSYS_SERVE__REDIS_PASSWORD")
    # `KEY: value` (mapping) or `- KEY=value` (list) entries of an environment block
    entry = rf"^\s*(?:-\s*)?({'|'.join(secret_keys)})\s*[:=][ \t]*(.*)$"
    assignments = re.findall(entry, text, flags=re.MULTILINE)
    assert {key for key, _ in assignments} == set(secret_keys), "every secret is passed to its service"
    for key, value in assignments:
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value.strip()), f"{key} must come from ${{VAR:?message}}: {value}"
    for value in re.findall(r"--requirepass\s+(\S+)", text):
        assert value.strip("\"'").startswith("$$"), "redis' password must be expanded inside the container"
    assert not re.search(r"redis://[^@\s]*:[^@\s]*@", text), "no password in a Redis URL"


def test_env_example_documents_the_secrets_without_values() -> None:
    example = (REPO / ".env.example").read_text()
    values = dict(
        line.split("=", 1) for line in example.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    assert set(values) == set(SECRET_VARS)
    assert all(value.strip() == "" for value in values.values())
    assert "secrets.token_urlsafe" in example
    assert ".env" in (REPO / ".gitignore").read_text().split()


# ---------------------------------------------------------------------------------------------- Dockerfiles
DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.gpu")


def _instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = (REPO / path).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical.splitlines() if line.strip()]


def _final_stage(path: str) -> list[tuple[str, str]]:
    instructions = _instructions(path)
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_is_multi_stage_on_slim_python(path: str) -> None:
    instructions = _instructions(path)
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) >= 2
    assert froms[-1].split()[-1] == "runtime"
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in instructions
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    final = _final_stage(path)
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    assert all(args.startswith("--from=builder ") for op, args in final if op == "COPY"), "only the venv is copied"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_installs_pinned_versions_from_the_lock(path: str) -> None:
    runs = " ".join(args for op, args in _instructions(path) if op == "RUN")
    copies = [args for op, args in _instructions(path) if op == "COPY"]
    assert any("requirements.lock" in c for c in copies)
    assert re.search(r"pip install (-c|-r) requirements\.lock", runs)
    assert "pip install --no-deps /tmp/wheels/" in runs and "pip check" in runs


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_runs_the_cli_as_a_non_root_user(path: str) -> None:
    final = _final_stage(path)
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert any(op == "RUN" and "--uid 10001" in args for op, args in final)
    assert ("EXPOSE", "8000") in final
    assert ("ENTRYPOINT", '["recsys"]') in final
    assert ("CMD", '["serve", "--host", "0.0.0.0", "--port", "8000"]') in final
    (healthcheck,) = [args for op, args in final if op == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/healthz" in healthcheck and "urllib.request" in healthcheck
    assert "curl" not in healthcheck


def test_gpu_dockerfile_swaps_faiss_and_adds_cuda() -> None:
    runs = " ".join(args for op, args in _instructions("docker/Dockerfile.gpu") if op == "RUN")
    assert "pip uninstall -y faiss-cpu" in runs
    assert '"tensorflow[and-cuda]==${TF_VERSION}"' in runs and '"faiss-gpu==${FAISS_VERSION}"' in runs
    assert runs.index("pip uninstall -y faiss-cpu") < runs.index('"faiss-gpu==')


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".env", "out", "benchmarks/results", "**/__pycache__"} <= ignored
    for needed in ("pyproject.toml", "requirements.lock", "README.md", "LICENSE", "recsys", "serving"):
        assert needed not in ignored
