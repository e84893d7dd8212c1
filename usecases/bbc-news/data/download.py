"""Download the raw BBC news archive from its official address and unpack it.

    python usecases/bbc-news/data/download.py --out DIR

The archive (Greene and Cunningham, ICML 2006; http://mlg.ucd.ie/datasets/bbc.html) holds
`bbc/<category>/NNN.txt` for 2,225 articles in business, entertainment, politics, sport and tech,
plus `bbc/README.TXT`. The top-level `bbc/` folder is dropped, so `DIR` ends up in the same layout
the DataPipeline reads and `generate.py` writes: `DIR/<category>/NNN.txt`. Files are unpacked
as they are (one article is Latin-1, not UTF-8): cleaning is the pipeline's job.

`--url` accepts any address urllib can open, file:// included (for a local copy of the archive).
Standard library only.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

BBC_URL = "http://mlg.ucd.ie/files/datasets/bbc-fulltext.zip"
CATEGORIES = ("business", "entertainment", "politics", "sport", "tech")


def fetch(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Stream `url` into `dest` (written under a temporary name, renamed when complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as resp, part.open("wb") as out:
        shutil.copyfileobj(resp, out, length=1 << 20)
    part.replace(dest)
    return dest


def _common_top(names: list[str]) -> str | None:
    """The single folder every member sits in (the archive's `bbc/`), if there is one."""
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in names):
        return tops.pop()
    return None


def unpack(archive: Path, out: Path) -> int:
    """Extract the archive's files into `out`, without its top folder; returns the file count.

    Members that would land outside `out` (absolute paths, `..`), macOS metadata folders and
    directory entries are skipped, so a hostile or odd archive cannot write elsewhere."""
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    written = 0
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir() and "__MACOSX" not in m.filename]
        top = _common_top([m.filename for m in members])
        for m in members:
            parts = PurePosixPath(m.filename).parts
            if top is not None:
                parts = parts[1:]
            if not parts or any(p in ("..", "") for p in parts) or m.filename.startswith("/"):
                continue
            target = root.joinpath(*parts).resolve()
            if not target.is_relative_to(root):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            written += 1
    return written


def check_layout(out: Path) -> dict[str, int]:
    """Articles per category; raises when a category folder is missing or empty."""
    counts = {c: sum(1 for _ in (out / c).glob("*.txt")) if (out / c).is_dir() else 0 for c in CATEGORIES}
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"{out}: no articles for {', '.join(missing)}; is this the BBC raw archive?")
    return counts


def download(out: Path, url: str = BBC_URL, keep_zip: bool = False) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="bbc-download-") as tmp:
        archive = fetch(url, Path(tmp) / "bbc-fulltext.zip")
        unpack(archive, out)
        if keep_zip:
            shutil.copy2(archive, out.parent / archive.name)
    return check_layout(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to unpack into (created)")
    parser.add_argument("--url", default=BBC_URL, help=f"archive address (default {BBC_URL})")
    parser.add_argument("--keep-zip", action="store_true", help="also keep the archive beside --out")
    args = parser.parse_args(argv)
    counts = download(args.out, args.url, args.keep_zip)
    print(f"unpacked {sum(counts.values())} articles into {args.out}: "
          + ", ".join(f"{c} {n}" for c, n in counts.items()))


if __name__ == "__main__":
    main()
