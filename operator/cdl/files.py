"""Files written so that a crash never leaves half of one, and trees made read-only.

`write_atomic` writes beside the target and renames over it (readers see the old or the new
content, never a mix); `read_only_tree` / `writable_tree` flip a tree's directories, as the data
engine does for checkouts and step inputs (Pachyderm mounts inputs read-only), and `remove_tree`
removes such a tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Replace `path` with `data` in one rename (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    if isinstance(data, str):
        data = data.encode()
    with open(tmp, "wb") as handle:
        handle.write(data)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any, **dumps: Any) -> None:
    """`write_atomic` of compact, key-sorted JSON (the same data gives the same bytes)."""
    options = {"separators": (",", ":"), "sort_keys": True} | dumps
    write_atomic(path, json.dumps(data, **options))


def read_only_tree(directory: Path) -> None:
    """Make every directory of the tree read-only (files inside cannot be added or removed)."""
    for root, dirs, _ in os.walk(directory):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    os.chmod(directory, 0o555)


def writable_tree(directory: Path) -> None:
    """Undo `read_only_tree` (before removing or rebuilding the tree)."""
    if not directory.exists():
        return
    with contextlib.suppress(FileNotFoundError):
        os.chmod(directory, os.stat(directory).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
    for root, dirs, _ in os.walk(directory):
        for d in dirs:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(os.path.join(root, d), 0o755)


def remove_tree(directory: Path) -> None:
    """Remove a tree, read-only directories included; what cannot be removed is left."""
    writable_tree(directory)
    shutil.rmtree(directory, ignore_errors=True)


PRIVATE_UMASK = 0o077


def make_private(directory: Path) -> None:
    """Make a data directory its owner's alone: the directory 0700 and the files directly in it
    0600 (the devcluster's `state.db` holds every Secret; the token and kubeconfig are keys),
    including those an older cdl left readable. What is created later inside it is made private
    by the processes' umask (`PRIVATE_UMASK`), set by `cdl up` and the API server."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for entry in directory.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_symlink():
                continue
            os.chmod(entry, 0o700 if entry.is_dir() else 0o600)
