"""Reusable data-pipeline steps, each a command run once per datum under Pachyderm's contract.

Run them as `python -m pipelines.<step> [options]` from a DataPipeline's `spec.steps[].command`;
inputs and outputs come from `cdl.runtime.pfs` (the `/pfs` layout locally and on a cluster).

- `pipelines.text.validate`  keep `.txt` files with enough text; repair non-UTF-8 bytes
- `pipelines.text.clean`     normalize text (encoding, Unicode form, newlines, whitespace)
- `pipelines.image.validate` decode IDX files (and PNG/JPEG) and check shapes, value and label ranges
- `pipelines.split`          a reproducible, optionally stratified train/test split by seed

Each step writes what it kept and discarded, and why, to `/pfs/out/.cdl-report.json`.
"""
