"""Helpers every CLI module shares: the console, exit codes, output formats, the repo root."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_USER = 1  # the user's input or a failed resource
EXIT_USAGE = 2
EXIT_PLATFORM = 3  # an engine or the platform failed


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def emit(data: Any, fmt: OutputFormat) -> bool:
    """Print data as JSON or YAML; return False when the caller should draw a table instead."""
    if fmt == OutputFormat.json:
        console.print_json(json.dumps(data, default=str))
        return True
    if fmt == OutputFormat.yaml:
        console.print(yaml.safe_dump(data, sort_keys=False), end="", markup=False, highlight=False)
        return True
    return False


def project_root() -> Path:
    """The checkout cdl runs from (holds crds/), found upward from the package or the cwd."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "crds").is_dir() and (parent / "pyproject.toml").exists():
                return parent
    return Path.cwd()
