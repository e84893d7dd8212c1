"""The GitLab pipeline for a team's repository, checked with gitlab-ci-local: its structure,
which jobs a data change and a model change start, and the validate job run in shell mode."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GCL = ROOT / ".tools" / "bin" / "gitlab-ci-local"


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{ROOT / '.tools' / 'bin'}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def team_repo(tmp_path):
    """A team repository (the pipeline, one use case's manifests and model) pushed to an origin."""
    if not GCL.exists():
        pytest.fail("gitlab-ci-local is missing: run `make tools`")
    origin, repo = tmp_path / "origin.git", tmp_path / "repo"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    repo.mkdir()
    shutil.copy(ROOT / ".gitlab-ci.yml", repo / ".gitlab-ci.yml")
    shutil.copytree(ROOT / "usecases" / "bbc-news" / "manifests", repo / "usecases" / "bbc-news" / "manifests")
    (repo / "usecases" / "bbc-news" / "model").mkdir(parents=True)
    (repo / "usecases" / "bbc-news" / "model" / "model_def.py").write_text("# model\n")
    (repo / "pipelines").mkdir()
    (repo / "pipelines" / "step.py").write_text("# step\n")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"],
                ["git", "remote", "add", "origin", str(origin)], ["git", "push", "-q", "origin", "main"],
                ["git", "remote", "set-head", "origin", "main"],
                ["git", "remote", "set-url", "origin", "git@gitlab.example.com:ml-team/bbc-news.git"]):
        run(cmd, repo)
    return repo


def jobs(repo: Path) -> set[str]:
    out = run([str(GCL), "--list-csv"], repo)
    rows = [line.split(";") for line in out.stdout.strip().splitlines()[1:]]
    return {row[0].strip('"') for row in rows if row}


def commit_change(repo: Path, rel: str) -> None:
    path = repo / rel
    path.write_text(path.read_text() + "\n# changed\n")
    run(["git", "commit", "-qam", f"change {rel}"], repo)


def test_pipeline_structure_previews(team_repo):
    out = run([str(GCL), "--preview"], team_repo)
    for stage in ("validate", "test", "build", "data", "train", "review", "deploy"):
        assert stage in out.stdout


def test_data_change_runs_data_jobs_only(team_repo):
    commit_change(team_repo, "usecases/bbc-news/manifests/datapipeline.yaml")
    found = jobs(team_repo)
    assert {"validate", "data"} <= found
    assert not found & {"train", "test", "deploy", "build-train-image"}


def test_model_change_trains_and_offers_deploy(team_repo):
    commit_change(team_repo, "usecases/bbc-news/model/model_def.py")
    found = jobs(team_repo)
    assert {"validate", "test", "train", "deploy", "build-train-image"} <= found
    assert "data" not in found


@pytest.mark.slow
def test_validate_job_runs_in_shell_mode(team_repo):
    out = run([str(GCL), "validate", "--force-shell-executor"], team_repo, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resource(s) valid" in out.stdout


def test_cdl_is_never_installed_by_name_from_the_public_index():
    """PyPI's `cdl` is another project (DataLab): the distribution is `cdl-mlops`, and the pipeline
    takes it from its CI image or the project's own package registry (--index-url, never
    --extra-index-url, which would let a public package of the same name win)."""
    import re
    import tomllib

    import yaml

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == "cdl-mlops"
    pipeline = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    lines = []
    for job in pipeline.values():
        if isinstance(job, dict):
            for key in ("before_script", "script"):
                lines += [str(line) for line in job.get(key) or []]
    installs = [line for line in lines if "pip install" in line and "cdl" in line]
    assert installs, "the pipeline installs cdl somewhere when its image lacks it"
    for line in installs:
        requirement = line.split("pip install", 1)[1]
        assert not re.search(r"[\"' ]cdl(\[|==|[\"' ]|$)", requirement), line
        assert "cdl-mlops" in line and "--extra-index-url" not in line
        assert re.search(r"--index-url \S*/api/v4/projects/\$\{CDL_PACKAGE_PROJECT\}/packages/pypi/simple", line), line
    assert pipeline[".cdl-cli"]["image"] == "$CDL_CI_IMAGE"
    dockerfile = (ROOT / "docker" / "ci-tools.Dockerfile").read_text()
    assert "scripts/install-tools.sh" in dockerfile and 'pip install ".[operator]"' in dockerfile
