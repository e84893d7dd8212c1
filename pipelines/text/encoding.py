"""Decoding text that is mostly UTF-8: real corpora hold the odd Windows-1252 byte (the BBC
archive has one such file), and throwing the document away would lose a labeled example."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

_HANDLER = "cdl-cp1252-fallback"


def _fallback(exc: UnicodeError) -> tuple[str, int]:
    """Decode each byte UTF-8 refused as Windows-1252 (Latin-1 where 1252 leaves a hole)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return bad.decode("cp1252", errors="ignore") or bad.decode("latin-1"), exc.end


codecs.register_error(_HANDLER, _fallback)


@dataclass(frozen=True)
class Decoded:
    text: str
    repaired: bool  # some bytes were not UTF-8 and were read as Windows-1252
    had_bom: bool


def decode(data: bytes) -> Decoded:
    """UTF-8 text; stray non-UTF-8 bytes are repaired rather than replaced by U+FFFD."""
    had_bom = data.startswith(codecs.BOM_UTF8)
    if had_bom:
        data = data[len(codecs.BOM_UTF8):]
    try:
        return Decoded(data.decode("utf-8"), False, had_bom)
    except UnicodeDecodeError:
        return Decoded(data.decode("utf-8", errors=_HANDLER), True, had_bom)
