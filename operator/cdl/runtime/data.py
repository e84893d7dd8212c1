"""Materialise a data version as a local directory inside a trial or an evaluation Job.

On the embedded platform the local engines hand user code a directory (`CDL_DATA_DIR`). On a
cluster the operator can only name the data version (`CDL_DATA_URI`); this module turns that name
into the same directory, once, before user code runs, so `cdl.runtime.trial.data_dir()` and
`os.environ["CDL_DATA_DIR"]` work alike on both platforms. Files keep their repo paths.

URIs:
  file:///dir                             the directory itself (nothing copied)
  s3://bucket/prefix/                     every object below the prefix (boto3; endpoint from
                                          CDL_S3_ENDPOINT, keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)
  pfs://project/repo@branch=commit        the commit's files from pachd (pachyderm-sdk walk/get; address
                                          from CDL_PACHD_ADDRESS, token from PACH_TOKEN if set)

The copy goes to `CDL_DATA_CACHE` (default `./.cdl-data`), in a folder named after the commit,
and is complete or absent: it is written beside and renamed into place.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from cdl.runtime.env import (
    ENV_DATA_CACHE,
    ENV_DATA_COMMIT,
    ENV_DATA_DIR,
    ENV_DATA_URI,
    ENV_PACHD,
    ENV_S3_ENDPOINT,
)

PFS_URI = re.compile(r"^pfs://(?:(?P<project>[^/@]+)/)?(?P<repo>[^/@]+)@(?:(?P<branch>[^=]+)=)?(?P<commit>[^/]+)$")


class DataUnavailable(RuntimeError):
    """The data version named for this workload cannot be read."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "data"


def materialise(uri: str, cache: Path | None = None, commit: str | None = None) -> Path:
    """A local directory holding the files of the data version `uri` (see the module doc)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
        if not path.is_dir():
            raise DataUnavailable(f"data {uri}: no such directory")
        return path
    if parsed.scheme not in ("s3", "pfs"):
        raise DataUnavailable(f"data {uri}: unsupported scheme {parsed.scheme!r}; use file://, s3:// or pfs://")
    cache = Path(cache or os.environ.get(ENV_DATA_CACHE) or ".cdl-data").absolute()
    match = PFS_URI.match(uri) if parsed.scheme == "pfs" else None
    if parsed.scheme == "pfs" and match is None:
        raise DataUnavailable(f"data {uri}: expected pfs://project/repo@branch=commit")
    name = _safe(commit or (match["commit"] if match else parsed.path.strip("/").replace("/", "_") or parsed.netloc))
    target = cache / name
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        if match is not None:
            _from_pfs(match, staging, uri)
        else:
            _from_s3(parsed.netloc, parsed.path.lstrip("/"), staging, uri)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _s3_client() -> Any:
    import boto3

    endpoint = os.environ.get(ENV_S3_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def _from_s3(bucket: str, prefix: str, dest: Path, uri: str) -> None:
    client = _s3_client()
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    found = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents") or []:
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            path = (dest / rel).resolve()
            if dest.resolve() not in path.parents:
                raise DataUnavailable(f"data {uri}: object {obj['Key']} escapes the data directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(path))
            found += 1
    if not found:
        raise DataUnavailable(f"data {uri}: no objects below s3://{bucket}/{prefix}")


def _from_pfs(match: re.Match[str], dest: Path, uri: str) -> None:
    from pachyderm_sdk import Client

    address = os.environ.get(ENV_PACHD)
    if not address:
        raise DataUnavailable(f"data {uri}: {ENV_PACHD} is not set, so pachd cannot be reached")
    client = Client.from_pachd_address(address)
    token = os.environ.get("PACH_TOKEN")
    if token:
        client.auth_token = token
    copy_pfs_commit(client, uri, dest)


def copy_pfs_commit(client: Any, uri: str, dest: Path) -> Path:
    """Write the files of the commit `uri` (pfs://project/repo@branch=commit) under `dest` with
    a pachyderm-sdk client (the trial's own, or the operator's data engine's)."""
    from pachyderm_sdk.api import pfs

    match = PFS_URI.match(uri)
    if match is None:
        raise DataUnavailable(f"data {uri}: expected pfs://project/repo@branch=commit")
    repo = pfs.Repo(name=match["repo"], type="user", project=pfs.Project(name=match["project"] or "default"))
    commit = pfs.Commit(repo=repo, id=match["commit"], branch=pfs.Branch(repo=repo, name=match["branch"] or "master"))
    dest.mkdir(parents=True, exist_ok=True)
    found = 0
    for info in client.pfs.walk_file(file=pfs.File(commit=commit, path="/")):
        if info.file_type != pfs.FileType.FILE:
            continue
        rel = info.file.path.lstrip("/")
        path = (dest / rel).resolve()
        if dest.resolve() not in path.parents:
            raise DataUnavailable(f"data {uri}: file {info.file.path} escapes the data directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            for chunk in client.pfs.get_file(file=pfs.File(commit=commit, path=info.file.path)):
                out.write(chunk.value)
        found += 1
    if not found:
        raise DataUnavailable(f"data {uri}: the commit holds no files")
    return dest


def ensure_data_dir() -> Path | None:
    """Set CDL_DATA_DIR from CDL_DATA_URI when only the URI is given (cluster); the directory."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR])
    uri = os.environ.get(ENV_DATA_URI)
    if not uri:
        return None
    path = materialise(uri, commit=os.environ.get(ENV_DATA_COMMIT))
    os.environ[ENV_DATA_DIR] = str(path)
    return path


def upload(path: Path, uri: str) -> None:
    """Write a local file to `uri` (file:// or s3://): a Job's results go back this way."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        dest = Path(urllib.parse.unquote(parsed.path))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return
    if parsed.scheme != "s3":
        raise DataUnavailable(f"cannot write to {uri}: use file:// or s3://")
    _s3_client().upload_file(str(path), parsed.netloc, parsed.path.lstrip("/"))
