"""Download the Fashion-MNIST IDX files from their official address and check them.

    python usecases/fashion-mnist/data/download.py --out DIR

Fetches the four gzipped IDX files Zalando Research publishes (60,000 training and 10,000 test
images of 28x28 pixels, ten classes; https://github.com/zalandoresearch/fashion-mnist) and checks
each against its published MD5 sum. They are stored as downloaded (`*.gz`); the DataPipeline
(`format: idx`) reads them directly, as in the paper, where the compressed files are committed
to a Pachyderm repository as they are.

`--base-url` accepts any address urllib can open, file:// included (a local mirror).
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import urllib.request
from pathlib import Path

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


class ChecksumError(ValueError):
    """A downloaded file differs from the published one."""


def md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, expected_md5: str | None, timeout: float = 60.0) -> Path:
    """Stream `url` to `dest` through a temporary name; a file failing its check is not kept."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, part.open("wb") as out:
            shutil.copyfileobj(resp, out, length=1 << 20)
        if expected_md5 is not None and (got := md5(part)) != expected_md5:
            raise ChecksumError(f"{url}: MD5 {got}, expected {expected_md5}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def download(out: Path, base_url: str = BASE_URL, checksums: dict[str, str] | None = None,
             verify: bool = True) -> list[Path]:
    """Fetch every file of `checksums` (default: the official four) into `out`. A file already
    there with the right checksum is not fetched again."""
    sums = OFFICIAL_MD5 if checksums is None else checksums
    out.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    paths = []
    for name, expected in sums.items():
        dest = out / name
        if not (verify and dest.is_file() and md5(dest) == expected):
            fetch(base + name, dest, expected if verify else None)
        paths.append(dest)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--base-url", default=BASE_URL, help=f"where the files are (default {BASE_URL})")
    parser.add_argument("--no-verify", action="store_true", help="skip the MD5 checks (e.g. a re-packed mirror)")
    args = parser.parse_args(argv)
    paths = download(args.out, args.base_url, verify=not args.no_verify)
    print(f"downloaded {len(paths)} files into {args.out}: " + ", ".join(p.name for p in paths))


if __name__ == "__main__":
    main()
