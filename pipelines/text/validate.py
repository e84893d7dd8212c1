"""Text validation: keep the documents a model can learn from, count the rest and say why.

A document is kept when it has an allowed suffix (`.txt` by default), decodes as UTF-8 (stray
Windows-1252 bytes are repaired unless `--encoding strict`) and holds at least `--min-chars`
non-blank characters. Kept documents are written as UTF-8 at the same repo path; the report
(`/pfs/out/.cdl-report.json`) counts discarded files by reason and repaired ones.

    python -m pipelines.text.validate --min-chars 100 [--suffix .txt] [--max-chars N]
                                      [--encoding repair|strict]
"""

from __future__ import annotations

import argparse
import os
import sys

from cdl.runtime.pfs import Report, datum_files, log
from pipelines.text.encoding import decode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.text.validate", description=__doc__.split("\n")[0])
    parser.add_argument("--min-chars", type=int, default=1, help="minimum non-blank characters (default 1)")
    parser.add_argument("--max-chars", type=int, default=0, help="maximum characters; 0 = no limit")
    parser.add_argument("--suffix", action="append", default=None,
                        help="allowed file suffix, case-insensitive; repeatable (default .txt)")
    parser.add_argument("--encoding", choices=("repair", "strict"), default="repair",
                        help="repair: read non-UTF-8 bytes as Windows-1252; strict: discard such files")
    return parser.parse_args(argv)


def check(data: bytes, rel: str, args: argparse.Namespace, suffixes: tuple[str, ...]) -> tuple[str | None, str, bool]:
    """(text to keep or None, reason when discarded, whether the encoding was repaired)."""
    if not rel.lower().endswith(suffixes):
        return None, "suffix", False
    decoded = decode(data)
    if decoded.repaired and args.encoding == "strict":
        return None, "not-utf8", False
    text = decoded.text
    if "\x00" in text:
        return None, "binary", decoded.repaired
    chars = sum(1 for c in text if not c.isspace())
    if chars == 0:
        return None, "empty", decoded.repaired
    if chars < args.min_chars:
        return None, "too-short", decoded.repaired
    if args.max_chars and len(text) > args.max_chars:
        return None, "too-long", decoded.repaired
    return text, "", decoded.repaired


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suffixes = tuple(s.lower() if s.startswith(".") else f".{s.lower()}" for s in (args.suffix or [".txt"]))
    report = Report(step=os.environ.get("PPS_PIPELINE_NAME", "validate"))
    for item in datum_files():
        text, reason, repaired = check(item.path.read_bytes(), item.rel, args, suffixes)
        if text is None:
            report.discard(item.rel, reason)
            log(f"discarded {item.rel}: {reason}")
            continue
        if repaired:
            report.repair(item.rel, "non-utf8")
            log(f"repaired {item.rel}: non-UTF-8 bytes read as Windows-1252")
        item.output().write_text(text, encoding="utf-8")
        report.keep(item.rel)
    report.write()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
