"""Text cleaning: one canonical form per document, so equal texts tokenize equally.

UTF-8 without BOM (stray Windows-1252 bytes repaired), a Unicode normal form (NFC by default),
`\\n` line ends, no control characters, no trailing blanks, at most one empty line in a row and a
single final newline. `--lowercase` folds case. Documents empty after cleaning are discarded and
counted in `/pfs/out/.cdl-report.json`.

    python -m pipelines.text.clean [--form NFC|NFKC|none] [--lowercase] [--min-chars N]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import unicodedata

from cdl.runtime.pfs import Report, datum_files, log
from pipelines.text.encoding import decode

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_BLANK_RUN = re.compile(r"\n{3,}")
_TRAILING = re.compile(r"[ \t]+\n")


def clean_text(text: str, form: str = "NFC", lowercase: bool = False) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = _CONTROL.sub("", text).replace("\xa0", " ")
    text = _TRAILING.sub("\n", text + "\n")
    text = _BLANK_RUN.sub("\n\n", text).strip()
    if lowercase:
        text = text.lower()
    return text + "\n" if text else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.text.clean", description=__doc__.split("\n")[0])
    parser.add_argument("--form", choices=("NFC", "NFKC", "none"), default="NFC", help="Unicode normal form")
    parser.add_argument("--lowercase", action="store_true", help="fold case")
    parser.add_argument("--min-chars", type=int, default=1, help="discard documents shorter after cleaning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(step=os.environ.get("PPS_PIPELINE_NAME", "clean"))
    for item in datum_files():
        decoded = decode(item.path.read_bytes())
        text = clean_text(decoded.text, args.form, args.lowercase)
        if sum(1 for c in text if not c.isspace()) < max(args.min_chars, 1):
            report.discard(item.rel, "empty-after-cleaning" if not text else "too-short")
            log(f"discarded {item.rel}: nothing left after cleaning")
            continue
        if decoded.repaired:
            report.repair(item.rel, "non-utf8")
        item.output().write_text(text, encoding="utf-8")
        report.keep(item.rel)
    report.write()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
