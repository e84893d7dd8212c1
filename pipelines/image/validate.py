"""Image validation: decode every image, check its shape and value range and its label's range.

IDX images/labels pairs (gzipped or not) are decoded and filtered item by item: an image of the
wrong shape, with values outside `--min`..`--max` (or NaN), or with a label outside
0..`--num-classes`-1 is dropped; the rest is written as an uncompressed pair under the same
name. A file that does not decode is discarded. Image files (PNG, JPEG, ...) are decoded with
Pillow and checked for shape. Counts by reason go to `/pfs/out/.cdl-report.json`.

    python -m pipelines.image.validate --shape 28,28 [--min 0] [--max 255] [--num-classes 10]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from cdl.runtime.idx import IdxError, decode_idx, encode_idx, find_pairs
from cdl.runtime.pfs import DatumFile, Report, datum_files, log, output_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected integers like 28,28")
    if not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected positive integers like 28,28")
    return shape


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.image.validate", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=parse_shape, default=None, help="image shape, e.g. 28,28 (default: any)")
    parser.add_argument("--min", type=float, default=0.0, help="smallest allowed pixel value (default 0)")
    parser.add_argument("--max", type=float, default=255.0, help="largest allowed pixel value (default 255)")
    parser.add_argument("--num-classes", type=int, default=0, help="labels must lie in 0..N-1; 0 = any >= 0")
    return parser.parse_args(argv)


def strip_gz(rel: str) -> str:
    return rel[:-3] if rel.endswith(".gz") else rel


def validate_pair(images: np.ndarray, labels: np.ndarray | None, args: argparse.Namespace,
                  report: Report, rel: str) -> np.ndarray | None:
    """The mask of items to keep, or None when the whole file is unusable (reported)."""
    if args.shape and tuple(images.shape[1:]) != args.shape:
        report.discard(rel, "shape")
        log(f"discarded {rel}: images of shape {tuple(images.shape[1:])}, expected {args.shape}")
        return None
    if labels is not None and labels.shape != (images.shape[0],):
        report.discard(rel, "label-count")
        log(f"discarded {rel}: {images.shape[0]} images but labels of shape {labels.shape}")
        return None
    flat = images.reshape(images.shape[0], -1).astype(np.float64, copy=False)
    ok = np.isfinite(flat).all(axis=1) & (flat >= args.min).all(axis=1) & (flat <= args.max).all(axis=1)
    bad = int((~ok).sum())
    if bad:
        report.discarded["out-of-range"] += bad
        log(f"{rel}: dropped {bad} image(s) with values outside {args.min}..{args.max}")
    if labels is not None:
        good_label = labels >= 0
        if args.num_classes:
            good_label &= labels < args.num_classes
        bad_labels = int((ok & ~good_label).sum())
        if bad_labels:
            report.discarded["bad-label"] += bad_labels
            log(f"{rel}: dropped {bad_labels} item(s) with labels outside 0..{args.num_classes - 1}")
        ok &= good_label
    return ok


def decode(item: DatumFile, report: Report) -> np.ndarray | None:
    try:
        return decode_idx(item.path.read_bytes())
    except IdxError as exc:
        report.discard(item.rel, "bad-idx")
        log(f"discarded {item.rel}: {exc}")
        return None


def validate_image_file(item: DatumFile, args: argparse.Namespace, report: Report) -> None:
    try:
        from PIL import Image
    except ImportError:
        report.discard(item.rel, "unsupported-format")
        log(f"discarded {item.rel}: Pillow is needed to read image files")
        return
    try:
        with Image.open(item.path) as img:
            img.load()
            array = np.asarray(img)
    except Exception as exc:  # Pillow raises many types for broken files
        report.discard(item.rel, "undecodable")
        log(f"discarded {item.rel}: {exc}")
        return
    if args.shape and tuple(array.shape[: len(args.shape)]) != args.shape:
        report.discard(item.rel, "shape")
        log(f"discarded {item.rel}: shape {array.shape}, expected {args.shape}")
        return
    if array.size and (array.min() < args.min or array.max() > args.max):
        report.discard(item.rel, "out-of-range")
        return
    output_path(item.rel).write_bytes(item.path.read_bytes())
    report.keep(item.rel)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(step=os.environ.get("PPS_PIPELINE_NAME", "validate"))
    files = {f.rel: f for f in datum_files()}
    pairs = find_pairs(list(files))
    paired = {name for pair in pairs for name in pair}
    for images_rel, labels_rel in pairs:
        images, labels = decode(files[images_rel], report), decode(files[labels_rel], report)
        if images is None or labels is None:
            if labels is None and images is not None:
                report.discard(images_rel, "missing-labels")
            elif images is None and labels is not None:
                report.discard(labels_rel, "missing-images")
            continue
        keep = validate_pair(images, labels, args, report, images_rel)
        if keep is None:
            report.discard(labels_rel, "paired-images-discarded")
            continue
        output_path(strip_gz(images_rel)).write_bytes(encode_idx(images[keep]))
        output_path(strip_gz(labels_rel)).write_bytes(encode_idx(labels[keep]))
        report.kept += int(keep.sum())
    for rel, item in files.items():
        if rel in paired:
            continue
        if "idx" in rel.lower():
            array = decode(item, report)
            if array is None:
                continue
            if array.ndim >= 2:
                keep = validate_pair(array, None, args, report, rel)
                if keep is None:
                    continue
                array = array[keep]
            output_path(strip_gz(rel)).write_bytes(encode_idx(array))
            report.kept += int(array.shape[0])
        elif rel.lower().endswith(IMAGE_SUFFIXES):
            validate_image_file(item, args, report)
        else:
            report.discard(rel, "unsupported-format")
            log(f"discarded {rel}: not an IDX or image file")
    report.write()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
