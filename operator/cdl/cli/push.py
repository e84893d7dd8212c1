"""`cdl push MODEL_DIR`: deliver model code to the platform as a content-addressed bundle.

The bundle (docs/cluster-path.md) goes to the artifact store the operator reads, at
`code/<sha256>.tar.gz`; with `-f` the Experiment manifests come out with `spec.model.bundle`
(uri, sha256) and `spec.model.git` (the commit: GitLab's CI_COMMIT_SHA / CI_PROJECT_URL, else
the checkout's HEAD) filled in, ready for `kubectl apply -f -` or a directory (`--out`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer
import yaml

from cdl.cli.common import EXIT_PLATFORM, EXIT_USER, err_console

GROUP = "cdl.dev"


def artifact_store(artifacts: str | None, data_dir: Path) -> Any:
    """The store `--artifacts` names, else CDL_ARTIFACT_URL (+ CDL_S3_*), else the embedded
    platform's (its operator.yaml under --data-dir)."""
    from cdl.config import OperatorConfig
    from cdl.stores.opener import open_artifact_store

    embedded = data_dir / "operator.yaml"
    config = OperatorConfig.load(embedded if embedded.is_file() and not os.environ.get("CDL_ARTIFACT_URL") else None)
    url = artifacts or os.environ.get("CDL_ARTIFACT_URL") or (config.artifact_url if embedded.is_file() else None)
    if not url:
        err_console.print("cdl push: no artifact store: pass --artifacts s3://bucket/prefix (with CDL_S3_ENDPOINT, "
                          "CDL_S3_ACCESS_KEY, CDL_S3_SECRET_KEY) or set CDL_ARTIFACT_URL, or start the embedded "
                          f"platform (cdl up) so that {embedded} exists")
        raise typer.Exit(EXIT_USER)
    return open_artifact_store(url, config.s3_settings())


def git_reference(model_dir: Path, commit: str | None, repository: str | None) -> dict[str, str] | None:
    commit = commit or os.environ.get("CI_COMMIT_SHA")
    repository = repository or os.environ.get("CI_PROJECT_URL")
    if not commit:
        try:
            done = subprocess.run(["git", "-C", str(model_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10)
            commit = done.stdout.strip() if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    if not commit:
        return None
    return {"commit": commit, **({"url": repository} if repository else {})}


def fill_manifests(paths: list[Path], bundle: dict[str, str], git: dict[str, str] | None) -> list[tuple[Path, str]]:
    """(file, YAML text) with every Experiment's spec.model naming the bundle."""
    out = []
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        for doc in docs:
            if doc.get("kind") == "Experiment" and str(doc.get("apiVersion", "")).startswith(f"{GROUP}/"):
                model = doc.setdefault("spec", {}).setdefault("model", {})
                model["bundle"] = dict(bundle)
                if git:
                    model["git"] = dict(git)
        out.append((path, yaml.safe_dump_all(docs, sort_keys=False)))
    return out


def _manifest_files(filenames: list[Path]) -> list[Path]:
    files: list[Path] = []
    for f in filenames:
        if f.is_dir():
            files += sorted(p for p in f.iterdir() if p.suffix in (".yaml", ".yml"))
        elif f.is_file():
            files.append(f)
        else:
            err_console.print(f"--filename: {f} does not exist")
            raise typer.Exit(EXIT_USER)
    return files


def push(
    model_dir: Path = typer.Argument(..., help="The model code directory (spec.model.path)."),
    filenames: list[Path] = typer.Option([], "--filename", "-f", help="Manifests to fill in (file or directory)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the filled manifests here (default: stdout)."),
    artifacts: str | None = typer.Option(None, "--artifacts", help="Artifact store URL (s3://bucket/prefix, file:///dir)."),
    data_dir: Path = typer.Option(Path(".cdl"), "--data-dir", "-d", help="The embedded platform's state."),
    commit: str | None = typer.Option(None, "--commit", help="Git commit of the code (default: CI_COMMIT_SHA, HEAD)."),
    repository: str | None = typer.Option(None, "--repository", help="Git URL (default: CI_PROJECT_URL)."),
) -> None:
    """Upload MODEL_DIR as a code bundle and name it in the Experiment manifests.

    Example (GitLab job): cdl push usecases/bbc-news/model -f usecases/bbc-news/manifests | kubectl apply -f -
    """
    from cdl.engines.training.code_bundle import BundleError, build

    files = _manifest_files(filenames)
    store = artifact_store(artifacts, data_dir)
    with tempfile.TemporaryDirectory(prefix="cdl-push-") as tmp:
        try:
            bundle = build(model_dir, Path(tmp) / "bundle.tar.gz")
        except BundleError as exc:
            err_console.print(f"cdl push: {exc}")
            raise typer.Exit(EXIT_USER) from None
        try:
            stored = store.stat(bundle.key)
            if stored is None or stored.sha256 != bundle.sha256:  # content-addressed: upload once
                stored = store.put_file(bundle.key, bundle.archive)
        except Exception as exc:  # noqa: BLE001 - the store's own message says what failed
            err_console.print(f"cdl push: uploading the bundle failed: {exc}")
            raise typer.Exit(EXIT_PLATFORM) from None
    ref = {"uri": stored.uri, "sha256": bundle.sha256}
    git = git_reference(model_dir, commit, repository)
    err_console.print(f"pushed {model_dir} as {stored.uri} ({bundle.files} files, {bundle.bytes} bytes, "
                      f"sha256 {bundle.sha256})" + (f", commit {git['commit'][:12]}" if git else ""), soft_wrap=True, markup=False, highlight=False)
    if not files:
        sys.stdout.write(json.dumps({"bundle": ref, **({"git": git} if git else {})}) + "\n")
        return
    filled = fill_manifests(files, ref, git)
    if out is None:
        sys.stdout.write("\n---\n".join(text.rstrip("\n") for _, text in filled) + "\n")
        return
    out.mkdir(parents=True, exist_ok=True)
    for path, text in filled:
        (out / path.name).write_text(text)


def register(app: typer.Typer) -> None:
    app.command("push")(push)
