"""The split as a pipeline step, by the rules of `cdl.engines.data.split` (the same ones
`spec.split` uses). As a step (glob `/`) it writes `/pfs/out/train/...` and `/pfs/out/test/...`;
IDX outputs hold one pair per side (`train-images-idx3-ubyte` + `train-labels-idx1-ubyte` in train,
`test-images-...` + `test-labels-...` in test).

    python -m pipelines.split --test 0.2 --seed 42 [--no-stratify] [--format files|csv|idx]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from cdl.engines.data.split import TEST, TRAIN, idx_names, split_csv, split_files, split_idx
from cdl.runtime.idx import decode_idx, encode_idx, find_pairs
from cdl.runtime.pfs import Report, datum_files, output_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.split", description=__doc__.split("\n")[0])
    parser.add_argument("--test", type=float, default=0.2, help="fraction for the test output (default 0.2)")
    parser.add_argument("--seed", type=int, default=42, help="seed; the same seed gives the same split")
    parser.add_argument("--no-stratify", dest="stratify", action="store_false", help="ignore labels")
    parser.add_argument("--format", choices=("files", "csv", "idx"), default="files")
    parser.add_argument("--label-column", default=None, help="CSV label column (default: label/category/...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = {f.rel: f for f in datum_files()}
    counts = {TRAIN: 0, TEST: 0}
    if args.format == "files":
        where = split_files(list(files), args.test, args.seed, args.stratify)
        for rel, side in where.items():
            output_path(f"{side}/{rel}").write_bytes(files[rel].path.read_bytes())
            counts[side] += 1
    elif args.format == "csv":
        for rel, item in files.items():
            if not rel.lower().endswith(".csv"):
                continue
            train, test, n_train, n_test = split_csv(item.path.read_bytes(), args.test, args.seed, args.stratify,
                                                     args.label_column)
            output_path(f"{TRAIN}/{rel}").write_bytes(train)
            output_path(f"{TEST}/{rel}").write_bytes(test)
            counts[TRAIN] += n_train
            counts[TEST] += n_test
    else:
        pairs = find_pairs(list(files))
        if not pairs:
            print("no IDX images/labels pair in the input", file=sys.stderr)
            return 1
        images = np.concatenate([decode_idx(files[i].path.read_bytes()) for i, _ in pairs])
        labels = np.concatenate([decode_idx(files[lab].path.read_bytes()) for _, lab in pairs])
        mask = split_idx(images, labels, args.test, args.seed, args.stratify)
        for side, sel in ((TRAIN, ~mask), (TEST, mask)):
            images_name, labels_name = idx_names(side, images.ndim - 1)
            output_path(f"{side}/{images_name}").write_bytes(encode_idx(images[sel]))
            output_path(f"{side}/{labels_name}").write_bytes(encode_idx(labels[sel]))
            counts[side] = int(sel.sum())
    report = Report(step="split", kept=counts[TRAIN] + counts[TEST])
    data = report.to_dict() | {"train": counts[TRAIN], "test": counts[TEST]}
    output_path(".cdl-report.json").write_text(json.dumps(data, indent=1))
    print(f"train {counts[TRAIN]}, test {counts[TEST]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
