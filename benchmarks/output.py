"""How every benchmark reports: progress lines, the JSON result (printed and saved) and the command that made it."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()


def log(message: str) -> None:
    """One progress line with the seconds elapsed since start."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", flush=True)


def emit_json(result: dict[str, Any], path: Path | None) -> None:
    """Print the result as indented JSON and write the same text to `path` (creating its folder) if given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the result as indented JSON (anything JSON cannot hold as its str), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def ranks_file(json_path: Path) -> Path:
    """Where a quality result's per-example ranks go: `<json stem>.ranks.npz` beside the JSON."""
    return json_path.with_name(json_path.stem + ".ranks.npz")


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns this benchmark: `python -m <module>` and its arguments (default: this process's)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
