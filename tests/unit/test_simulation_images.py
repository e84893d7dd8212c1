"""Images as the cluster simulation reads them from the project's Dockerfiles (cdl.simulation.images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdl.simulation.images import Dockerfile, ImageBuilder, ImageError

ROOT = Path(__file__).resolve().parents[2]


def test_the_predictor_dockerfile_reads_as_its_files_packages_env_and_command() -> None:
    d = Dockerfile.parse(ROOT / "docker" / "predictor.Dockerfile")
    assert ("operator/cdl/runtime", "/microservice/cdl/runtime", d.copies[-1][2]) in d.copies
    assert d.workdir == "/microservice"
    assert d.env["MODEL_NAME"] == "CdlPredictor" and d.env["KERAS_BACKEND"] == "torch"
    assert "-r:/tmp/requirements.txt" in d.packages
    written = {path: body for path, body, _append, _line in d.files}
    assert written["/microservice/cdl/__init__.py"] == ""
    assert written["/microservice/CdlPredictor.py"] == "from cdl.runtime.serving import CdlPredictor  # noqa: F401\n"
    assert d.cmd[:2] == ["sh", "-c"] and "seldon-core-microservice $MODEL_NAME" in d.cmd[2]


def test_the_training_image_takes_its_base_images_packages_and_only_the_runtime() -> None:
    d = Dockerfile.parse(ROOT / "docker" / "train.Dockerfile")
    assert "determined==0.38.1" in d.packages and "tensorboard" in d.packages  # determinedai/pytorch-ngc
    assert {dest for _src, dest, _line in d.copies} == {"/opt/cdl/cdl/__init__.py", "/opt/cdl/cdl/runtime"}
    assert d.env["PYTHONPATH"] == "/opt/cdl"


def test_image_references_name_their_dockerfile(tmp_path: Path) -> None:
    builder = ImageBuilder(ROOT, tmp_path)
    assert builder.dockerfile_for("registry.example.com/cdl/bbc-train:0.1.0").name == "train.Dockerfile"
    assert builder.dockerfile_for("registry.example.com/cdl/bbc-serve:0.1.0").name == "predictor.Dockerfile"
    assert builder.dockerfile_for("registry.example.com/cdl/pipelines@sha256:abc").name == "pipelines.Dockerfile"
    with pytest.raises(ImageError, match="none matches 'tensorflow'"):
        builder.dockerfile_for("docker.io/tensorflow/tensorflow:2.15")


def test_a_copy_of_a_missing_file_fails_the_build_with_the_line(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "docker").mkdir(parents=True)
    (checkout / "docker" / "steps.Dockerfile").write_text(
        "FROM python:3.11-slim\n# steps\nWORKDIR /opt/app\nCOPY pipelines /opt/app/pipelines\n")
    with pytest.raises(ImageError, match=r"steps.Dockerfile:4: COPY pipelines: no such file"):
        ImageBuilder(checkout, tmp_path / "work").image("example.com/team/steps:1")


def test_a_package_the_environment_lacks_fails_the_build(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "docker").mkdir(parents=True)
    (checkout / "docker" / "odd.Dockerfile").write_text(
        "FROM python:3.11-slim\nRUN pip install \"numpy<3\" no-such-package-cdl==1.0\n")
    with pytest.raises(ImageError, match="installs no-such-package-cdl, which the environment"):
        ImageBuilder(checkout, tmp_path / "work").image("example.com/team/odd:1")
