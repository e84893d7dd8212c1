"""Fixtures for the data engine and labeling: a real Label Studio server, a local HTTP file server,
a local data engine per test, and small generated corpora in the real datasets' layouts.

- `labelstudio_server`: Label Studio 1.23.2 from `.venvs/label-studio` (scripts/setup-labelstudio.sh),
  started once per session on a free 127.0.0.1 port with a fresh data dir and a legacy API token,
  in its own process group (first start 40 s to 3 min on a busy machine; tests using it are slow).
- `data_http_server`: a directory served over HTTP on 127.0.0.1 (`.root`, `.url(name)`).
- `data_engine`: a `LocalDataEngine` under the test's tmp dir, closed afterwards.
- `make_text_corpus`, `make_idx_pair`: corpora like the BBC archive and Fashion-MNIST, made here.
"""

from __future__ import annotations

import functools
import http.server
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cdl.processes import stop_group

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL_STUDIO_VENV = REPO_ROOT / ".venvs" / "label-studio"
LABEL_STUDIO_START_TIMEOUT = 420.0
_LOGS: list[Path] = []  # Label Studio's log, attached to failed tests that used it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<unreadable: {exc}>"


# --------------------------------------------------------------------------- corpora


def make_text_corpus(root: Path, labels: tuple[str, ...] = ("business", "sport", "tech"), per_label: int = 10,
                     words: int = 40) -> dict[str, str]:
    """`<label>/<NNN>.txt` articles long enough for `--min-chars 100`; returns {path: label}."""
    made = {}
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            rel = f"{label}/{i:03d}.txt"
            (root / rel).write_text(f"{label.title()} story {i}.\n" + " ".join(f"{label}{i}w{j}" for j in range(words)))
            made[rel] = label
    return made


def make_idx_pair(directory: Path, prefix: str, n: int, shape: tuple[int, int] = (28, 28), classes: int = 10,
                  seed: int = 0, gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST-like `<prefix>-images-idx3-ubyte` / `<prefix>-labels-idx1-ubyte` pair."""
    import gzip

    from cdl.runtime.idx import encode_idx

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = encode_idx(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return images, labels


@pytest.fixture
def text_corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "corpus"
    return root, make_text_corpus(root)


# --------------------------------------------------------------------------- engine


@pytest.fixture
def data_engine(tmp_path: Path) -> Iterator:
    from cdl.engines.data.local import LocalDataEngine

    engine = LocalDataEngine(tmp_path / "data-engine", workers=2)
    yield engine
    engine.close()


# --------------------------------------------------------------------------- HTTP file server


@dataclass
class HttpFiles:
    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def data_http_server(tmp_path: Path) -> Iterator[HttpFiles]:
    """Files under `.root` served by http.server on 127.0.0.1 (a thread; stopped afterwards)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="data-http-server", daemon=True)
    thread.start()
    try:
        yield HttpFiles(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- Label Studio


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str  # legacy API token of the admin user
    username: str
    log_path: Path
    pid: int


def _api_ready(url: str, token: str) -> bool:
    request = urllib.request.Request(f"{url}/api/projects?page_size=1", headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def labelstudio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """Label Studio 1.23.2 on 127.0.0.1 with a fresh data dir; the API answers the legacy token."""
    exe = LABEL_STUDIO_VENV / "bin" / "label-studio"
    if not exe.exists():
        pytest.fail(f"Label Studio is not installed in {LABEL_STUDIO_VENV}: run `make engines` "
                    "(bash scripts/setup-labelstudio.sh)")
    base = tmp_path_factory.mktemp("label-studio")
    data_dir = base / "data"
    log_path = base / "label-studio.log"
    port = _free_port()
    token = secrets.token_hex(20)
    username = "labeler@cdl.test"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO", "LABEL_STUDIO"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    })
    _LOGS.append(log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            cwd=base, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + LABEL_STUDIO_START_TIMEOUT
        delay = 0.5
        while not _api_ready(url, token):
            if proc.poll() is not None:
                pytest.fail(f"Label Studio exited with {proc.returncode} before it was ready:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"Label Studio not ready at {url} within {LABEL_STUDIO_START_TIMEOUT:.0f} s:\n"
                            f"{_tail(log_path)}")
            time.sleep(delay)
            delay = min(delay * 1.5, 3.0)
        yield LabelStudioServer(url, token, username, log_path, proc.pid)
    finally:
        stop_group(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Attach Label Studio's log to the report of a failed test that used it."""
    report = yield
    if report.failed and "labelstudio_server" in getattr(item, "fixturenames", ()):
        for path in _LOGS:
            report.sections.append((f"Label Studio log ({path})", _tail(path)))
    return report
