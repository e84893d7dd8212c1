"""Measure the BBC news classifier on the real corpus: held-out accuracy, macro F1 and wall time.

It reproduces the workflow's numbers without the platform: a stratified 80/20 train/test split by
seed (as the DataPipeline's `split` does), training through det.pytorch with the trial's own 80/20
validation split, then `evaluate.evaluate` on the untouched test part. The split is made of
symbolic links in a temporary folder; the corpus itself is only read.

    .venv/bin/python usecases/bbc-news/bench_real.py /path/to/bbc 6
    .venv/bin/python usecases/bbc-news/bench_real.py /path/to/bbc 6 --seeds 1,2,3 \
        --hparams '{"hidden_size": 128, "dropout": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL_DIR = Path(__file__).resolve().parent / "model"
sys.path.insert(0, str(MODEL_DIR))

from evaluate import evaluate  # noqa: E402
from model_def import DEFAULT_HPARAMS, train_locally  # noqa: E402
from news_model import TextVectorizer, load_corpus, stratified_split  # noqa: E402


def split_links(data_dir: Path, out: Path, test_fraction: float, seed: int) -> tuple[Path, Path]:
    """`out/train` and `out/test` as `<label>/<file>` links into `data_dir`."""
    corpus = load_corpus(data_dir)
    root = Path(corpus.root).resolve()
    train_idx, test_idx = stratified_split(corpus.labels, test_fraction, seed)
    for name, idx in (("train", train_idx), ("test", test_idx)):
        for i in idx:
            link = out / name / corpus.paths[i]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(root / corpus.paths[i])
    return out / "train", out / "test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="the raw BBC folder (<label>/NNN.txt)")
    parser.add_argument("epochs", type=int, help="training epochs per run")
    parser.add_argument("--hparams", default="{}", help="JSON overriding the trial's defaults")
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds (one run each)")
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the train/test split")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    json_out = args.json.resolve() if args.json else None  # before the chdir below

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    hparams = {**DEFAULT_HPARAMS, **json.loads(args.hparams)}
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bbc-bench-") as tmp:
        train_dir, test_dir = split_links(args.data_dir, Path(tmp) / "data", args.test_fraction, args.split_seed)
        n_train = sum(1 for _ in train_dir.rglob("*.txt"))
        n_test = sum(1 for _ in test_dir.rglob("*.txt"))
        t0 = time.perf_counter()
        vectorizer = TextVectorizer()
        for text in load_corpus(train_dir).texts:
            vectorizer.tokens(text)
        prep_seconds = time.perf_counter() - t0  # the part of each training run spent reading and stemming
        os.chdir(MODEL_DIR)  # Determined copies the working folder into the checkpoint's code/
        for seed in seeds:
            t0, c0 = time.perf_counter(), time.process_time()
            ckpt = train_locally(train_dir, hparams, args.epochs, Path(tmp) / f"ckpt-{seed}", seed=seed)
            t1, c1 = time.perf_counter(), time.process_time()
            result = evaluate(str(ckpt), str(test_dir))
            t2 = time.perf_counter()
            rows.append((seed, result["metrics"]["accuracy"], result["metrics"]["macro_f1"], t1 - t0, t2 - t1,
                         c1 - c0))

    load = os.getloadavg()[0]
    print(f"\nBBC news, {n_train} training / {n_test} test articles, {args.epochs} epochs, "
          f"{args.threads} torch threads on {os.cpu_count()} CPUs (load average {load:.1f}), "
          f"hparams {json.dumps(hparams, sort_keys=True)}")
    print("train s: wall time of preprocessing, training and checkpointing; train cpu s: CPU time of all threads; "
          f"reading and stemming the training articles alone: {prep_seconds:.1f} s")
    print(f"{'seed':>6} {'accuracy':>9} {'macro F1':>9} {'train s':>8} {'train cpu s':>12} {'eval s':>7}")
    for seed, acc, f1, tt, te, tc in rows:
        print(f"{seed:>6} {acc:>9.4f} {f1:>9.4f} {tt:>8.1f} {tc:>12.1f} {te:>7.1f}")
    med = [statistics.median(r[k] for r in rows) for k in (1, 2, 3, 4, 5)]
    if len(rows) > 1:
        print(f"{'median':>6} {med[0]:>9.4f} {med[1]:>9.4f} {med[2]:>8.1f} {med[4]:>12.1f} {med[3]:>7.1f}")
    if json_out:
        json_out.write_text(json.dumps({
            "train_articles": n_train, "test_articles": n_test, "epochs": args.epochs, "threads": args.threads,
            "hparams": hparams,
            "load_average": load, "preprocessing_seconds": prep_seconds,
            "runs": [{"seed": r[0], "accuracy": r[1], "macro_f1": r[2], "train_seconds": r[3], "eval_seconds": r[4],
                      "train_cpu_seconds": r[5]} for r in rows],
            "median": {"accuracy": med[0], "macro_f1": med[1], "train_seconds": med[2], "eval_seconds": med[3],
                       "train_cpu_seconds": med[4]},
        }, indent=2))


if __name__ == "__main__":
    main()
