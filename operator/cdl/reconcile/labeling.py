"""Turning a data output directory into labeling items (text inline, images by path)."""

from __future__ import annotations

from pathlib import Path

from cdl.engines.base import LabelItem

TEXT_SUFFIXES = {".txt", ".md", ".csv"}
MAX_INLINE = 20_000


def label_items(directory: Path, split: str, repo: str | None = None,
                commit: str | None = None) -> tuple[list[LabelItem], list[str]]:
    """Items of one output, with automatic labels from the parent folder name when there is one."""
    items: list[LabelItem] = []
    classes: list[str] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(directory).as_posix()
        label = path.parent.name if path.parent != directory else None
        if label and label not in classes:
            classes.append(label)
        if path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="replace")[:MAX_INLINE]
            items.append(LabelItem(path=rel, text=text, label=label, split=split, repo=repo, commit=commit))
        else:
            items.append(LabelItem(path=rel, url=path.as_uri(), label=label, split=split, repo=repo, commit=commit))
    return items, classes
