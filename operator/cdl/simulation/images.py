"""Container images as the simulation runs them: the files a Dockerfile copies plus the packages it installs.

No container runtime runs here, so an image is reproduced from its Dockerfile (docker/*.Dockerfile):
- its files: every `COPY src dest` laid out under a per-image root folder (`<root>/<dest>`), read
  from the checkout the images are built from; a source that does not exist fails the build with
  the Dockerfile's line, as `docker build` would;
- its packages: the Python environment whose packages match what the image's `RUN pip install`
  lines (and the requirement files they name) install: the project's main virtual environment
  for the operator, training and pipeline images, `.venvs/seldon` for the predictor image. The
  image gets an environment of its own that sees that environment's site-packages but not the
  checkout (the editable install of `cdl` is left out), so a module of the project the image does
  not copy cannot be imported. A package the image installs that the environment lacks fails the
  build; packages the environment holds beyond the image's list are not hidden;
- its `ENV` and `WORKDIR`, with paths that point inside the image mapped into its root.

`Image.command_env` gives what a process started from the image sees; `Image.path` maps a path
inside the container to the host. A container reference (`registry/cdl/bbc-train:0.1.0`) names the
Dockerfile by its last path segment: `<name>.Dockerfile`; a team's `*-train` image is built from
`train.Dockerfile` and its `*-serve` image from `predictor.Dockerfile`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

# What the base images the Dockerfiles start FROM install (python:3.11-slim: none).
BASE_IMAGE_PACKAGES = {
    "determinedai/pytorch-ngc": ["determined==0.38.1", "torch", "tensorboard", "boto3"],
}
PYTHON_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"
SELDON_PACKAGE = "seldon-core"


class ImageError(RuntimeError):
    """An image cannot be built or does not hold what a command needs."""


@dataclass
class Dockerfile:
    """What the simulation reads from a Dockerfile."""

    path: Path
    copies: list[tuple[str, str, int]] = field(default_factory=list)  # (source, dest, line)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    packages: list[str] = field(default_factory=list)
    files: list[tuple[str, str, bool, int]] = field(default_factory=list)  # (path, text, append, line) a RUN writes
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        out = cls(path)
        text = path.read_text()
        logical: list[tuple[int, str]] = []
        buffer, start = "", 0
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not buffer and (not stripped or stripped.startswith("#")):
                continue
            if not buffer:
                start = number
            if stripped.endswith("\\"):
                buffer += stripped[:-1] + " "
                continue
            logical.append((start, buffer + stripped))
            buffer = ""
        for number, line in logical:
            instruction, _, rest = line.partition(" ")
            instruction = instruction.upper()
            rest = rest.strip()
            if instruction == "FROM":
                base = rest.split()[0].split(":", 1)[0]
                out.packages += BASE_IMAGE_PACKAGES.get(base, [])
            elif instruction == "COPY":
                parts = [p for p in shlex.split(rest) if not p.startswith("--")]
                *sources, dest = parts
                for source in sources:
                    out.copies.append((source, dest, number))
            elif instruction == "ENV":
                out.env.update(_env_pairs(rest, out.env))
            elif instruction == "WORKDIR":
                out.workdir = rest if rest.startswith("/") else f"{out.workdir.rstrip('/')}/{rest}"
            elif instruction == "RUN":
                out.packages += _pip_packages(rest)
                out.files += [(path, body, append, number) for path, body, append in _written_files(rest)]
            elif instruction in ("CMD", "ENTRYPOINT"):
                value = _exec_form(rest)
                setattr(out, instruction.lower(), value)
        return out


def _env_pairs(rest: str, current: dict[str, str]) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    out: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        out[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: current.get(m.group(1), out.get(m.group(1), "")), value)
    return out


def _exec_form(rest: str) -> list[str]:
    import json

    if rest.startswith("["):
        return list(json.loads(rest))
    return ["/bin/sh", "-c", rest]


def _pip_packages(run: str) -> list[str]:
    """The requirement specifiers (and `-r file` references, as `-r:<file>`) of a RUN's pip installs."""
    out: list[str] = []
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        if len(words) < 3 or words[0] not in ("pip", "pip3") or words[1] != "install":
            continue
        skip = False
        for i, word in enumerate(words[2:], 2):
            if skip:
                skip = False
                continue
            if word in ("-r", "--requirement"):
                out.append(f"-r:{words[i + 1]}")
                skip = True
            elif word in ("--extra-index-url", "--index-url", "-i", "-c", "--constraint"):
                skip = True
            elif word.startswith("-"):
                continue
            elif word.startswith((".", "/")):
                out.append(f"project:{word}")
            else:
                out.append(word)
    return out


def _written_files(run: str) -> list[tuple[str, str, bool]]:
    """Files a RUN creates with `touch PATH` or `printf FMT > PATH` (the only file-writing shell the
    project's Dockerfiles use): (path, content, append)."""
    out: list[tuple[str, str, bool]] = []
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        if not words:
            continue
        if words[0] == "touch":
            out += [(w, "", True) for w in words[1:] if not w.startswith("-")]
        elif words[0] == "printf" and len(words) >= 4 and words[-2] in (">", ">>"):
            fmt = words[1].encode().decode("unicode_escape")
            out.append((words[-1], fmt.replace("%%", "%"), words[-2] == ">>"))
    return out


def _project_roots(project: Path) -> list[Path]:
    """The source roots `pip install <project>` takes packages from (setuptools' packages.find `where`)."""
    import tomllib

    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        raise ImageError(f"pip install {project}: the image holds no pyproject.toml there")
    data = tomllib.loads(pyproject.read_text())
    where = (((data.get("tool") or {}).get("setuptools") or {}).get("packages") or {}).get("find", {}).get("where")
    return [(project / w).resolve() for w in (where or ["."])]


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _installed(site_packages: Path) -> set[str]:
    names = set()
    for dist in site_packages.glob("*.dist-info"):
        names.add(re.sub(r"-[^-]+$", "", dist.name[: -len(".dist-info")]).lower().replace("_", "-"))
    return names


@dataclass
class Image:
    """One built image: its root folder (the files), its Python environment (the packages), its ENV."""

    name: str
    dockerfile: Dockerfile
    root: Path
    python_env: Path  # the image's own environment (bin/python), over `base_env`'s packages
    base_env: Path

    def path(self, container_path: str) -> Path:
        """The host path of a path inside the image."""
        return self.root / container_path.lstrip("/")

    def map_value(self, value: str) -> str:
        """A value with the image's absolute paths (those that exist in its root) mapped to the host."""
        def one(part: str) -> str:
            if part.startswith("/") and part != "/" and self.path(part).exists():
                return str(self.path(part))
            return part

        return ":".join(one(p) for p in value.split(":"))

    @property
    def bin(self) -> Path:
        return self.python_env / "bin"

    def command_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process started from the image: its ENV (paths mapped), PATH with
        the image's python first, HOME and LANG; then `extra` (the pod's or the engine's env)."""
        env = {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
        for key, value in self.dockerfile.env.items():
            env[key] = self.map_value(value)
        if env.get("HOME", "").startswith("/tmp"):
            env["HOME"] = str(self.root / "tmp")
            Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        env["VIRTUAL_ENV"] = str(self.python_env)
        if extra:
            env.update(extra)
        return env

    def resolve(self, argv: list[str]) -> list[str]:
        """argv with a bare program (`python3`, `seldon-core-microservice`) taken from the image's
        environment; a program the image does not hold fails loudly."""
        if not argv:
            raise ImageError(f"image {self.name}: no command to run")
        program = argv[0]
        if "/" in program:
            return list(argv)
        found = self.bin / program
        if found.exists():
            return [str(found), *argv[1:]]
        if program in ("sh", "bash", "env", "true", "false", "cat", "echo"):
            return list(argv)
        raise ImageError(f"image {self.name} ({self.dockerfile.path.name}) has no program {program!r}")


class ImageBuilder:
    """Builds the images of a checkout into `work_dir/images/<name>` (once per process and name)."""

    def __init__(self, source: Path, work_dir: Path, venvs: dict[str, Path] | None = None) -> None:
        self.source = Path(source)
        self.work_dir = Path(work_dir)
        self.venvs = {k: v.resolve() for k, v in (venvs or default_venvs(self.source)).items()}
        self._built: dict[str, Image] = {}
        self._lock = threading.Lock()

    def dockerfile_for(self, reference: str) -> Path:
        """The Dockerfile of a container image reference."""
        repository = reference.rsplit("@", 1)[0]
        last = repository.rsplit("/", 1)[-1]
        name = last.split(":", 1)[0]
        candidates = [name]
        if name.endswith("-train"):
            candidates.append("train")
        elif name.endswith("-serve"):
            candidates.append("predictor")
        for candidate in candidates:
            path = self.source / "docker" / f"{candidate}.Dockerfile"
            if path.exists():
                return path
        known = ", ".join(sorted(p.name.removesuffix(".Dockerfile") for p in (self.source / "docker").glob(
            "*.Dockerfile")))
        raise ImageError(f"image {reference!r}: the simulation builds images from docker/<name>.Dockerfile "
                         f"and none matches {name!r} (known: {known})")

    def image(self, reference: str) -> Image:
        path = self.dockerfile_for(reference)
        name = path.name.removesuffix(".Dockerfile")
        with self._lock:
            if name not in self._built:
                self._built[name] = self._build(name, Dockerfile.parse(path))
            return self._built[name]

    def _build(self, name: str, dockerfile: Dockerfile) -> Image:
        root = self.work_dir / "images" / name / "rootfs"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for source, dest, line in dockerfile.copies:
            src = self.source / source
            if not src.exists():
                raise ImageError(f"{dockerfile.path.name}:{line}: COPY {source}: no such file in {self.source}")
            target_dir = dest if dest.startswith("/") else f"{dockerfile.workdir.rstrip('/')}/{dest}"
            target = root / target_dir.lstrip("/")
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                if dest.endswith("/") or target.is_dir():
                    target = target / src.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
        (root / dockerfile.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        for path, body, append, _line in dockerfile.files:
            target = root / (path if path.startswith("/") else f"{dockerfile.workdir}/{path}").lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a" if append else "w") as f:
                f.write(body)
        requirements = self._requirements(dockerfile, root)
        base = self.venvs["seldon" if any(_requirement_name(r) == SELDON_PACKAGE for r in requirements) else "main"]
        self._check_packages(name, dockerfile, requirements, base)
        # `pip install .` of the project: its packages as the image's copy holds them.
        project: list[Path] = []
        for spec in dockerfile.packages:
            if spec.startswith("project:"):
                local = spec[len("project:"):].split("[", 1)[0]  # ".[operator,cluster]" -> "."
                project += _project_roots(root / dockerfile.workdir.lstrip("/") / local)
        python_env = self._environment(name, base, project)
        return Image(name, dockerfile, root, python_env, base)

    def _requirements(self, dockerfile: Dockerfile, root: Path) -> list[str]:
        out: list[str] = []
        for spec in dockerfile.packages:
            if spec.startswith("-r:"):
                path = spec[3:]
                host = root / path.lstrip("/") if path.startswith("/") else root / dockerfile.workdir.lstrip("/") / path
                for line in host.read_text().splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        out.append(line)
            elif spec.startswith("project:"):
                out.append("cdl")
            else:
                out.append(spec)
        return out

    def _check_packages(self, name: str, dockerfile: Dockerfile, requirements: list[str], base: Path) -> None:
        installed = _installed(site_packages(base))
        missing = sorted({_requirement_name(r) for r in requirements} - installed - {"cdl", "setuptools"})
        if missing:
            raise ImageError(f"image {name} ({dockerfile.path.name}) installs {', '.join(missing)}, which the "
                             f"environment {base} does not hold: install them there first")

    def _environment(self, name: str, base: Path, project: list[Path]) -> Path:
        """A virtual environment for the image that sees `base`'s site-packages through a path entry
        (so `base`'s .pth hooks, such as the editable install of the checkout, do not run) and
        carries `base`'s console scripts pointed at it."""
        env = self.work_dir / "images" / name / "python"
        if env.exists():
            shutil.rmtree(env)
        subprocess.run([str(base_interpreter(base)), "-m", "venv", "--without-pip", str(env)], check=True)
        ours = site_packages(env)
        (ours / "_image_packages.pth").write_text("".join(f"{p}\n" for p in [*project, site_packages(base)]))
        python = env / "bin" / "python"
        if project:  # the project's console script
            (env / "bin" / "cdl").write_text(f"#!{python}\nfrom cdl.cli.main import app\napp()\n")
            (env / "bin" / "cdl").chmod(0o755)
        for script in (base / "bin").iterdir():
            target = env / "bin" / script.name
            if target.exists() or not script.is_file():
                continue
            try:
                head = script.read_bytes()[:200]
            except OSError:
                continue
            if not head.startswith(b"#!") or b"python" not in head.split(b"\n", 1)[0]:
                continue
            body = script.read_text().split("\n", 1)[1]
            target.write_text(f"#!{python}\n{body}")
            target.chmod(0o755)
        return env


def site_packages(env: Path) -> Path:
    return env / "lib" / PYTHON_VERSION / "site-packages"


def base_interpreter(env: Path) -> Path:
    python = env / "bin" / "python"
    return Path(os.path.realpath(python)) if python.exists() else Path(sys.executable)


def default_venvs(source: Path) -> dict[str, Path]:
    """The environments the images' packages come from: this interpreter's for the main images,
    `.venvs/seldon` (or CDL_SELDON_VENV) for the predictor."""
    main = Path(sys.prefix)
    seldon = Path(os.environ.get("CDL_SELDON_VENV") or source / ".venvs" / "seldon")
    return {"main": main, "seldon": seldon}


__all__ = ["Dockerfile", "Image", "ImageBuilder", "ImageError", "default_venvs", "site_packages"]
