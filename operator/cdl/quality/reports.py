"""The evaluation report of a model version: Markdown for people, JSON for tools.

One report holds what a model validator needs to review a version (the paper's Review step):
metrics and gate verdicts, the confusion matrix and per-class figures for classifiers, the
compressed variant beside the original, the lineage (experiment, trial, checkpoint, data
commit, code commit, image), a model card, and a reproducibility section that answers the
NeurIPS reproducibility checklist items the platform can answer (ModelKB, Table 3) with the
recorded value, or says "not recorded".

`render_report(data)` takes a plain mapping (camelCase keys, as in status). Everything is
optional; `packageDir` (or `package`, the manifest itself) lets the report read the package's
`cdl-package.json` for hyperparameters, framework, requirements, the experiment's spec, the
model description and the training's compute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"

METRIC_DEFINITIONS = {
    "accuracy": "fraction of evaluation examples whose predicted class equals the true class",
    "macro_f1": "unweighted mean over classes of F1 = 2PR/(P+R), P and R the class's precision and recall",
    "f1": "F1 = 2PR/(P+R) of precision P and recall R",
    "weighted_f1": "mean over classes of F1 weighted by each class's number of true examples",
    "precision": "fraction of predicted positives that are true positives",
    "recall": "fraction of true positives that were predicted positive",
    "loss": "the mean loss over the evaluation examples, as the evaluation entrypoint computes it",
    "error": "fraction of evaluation examples predicted wrongly (1 - accuracy)",
    "mse": "mean squared error over the evaluation examples",
    "mae": "mean absolute error over the evaluation examples",
    "rmse": "square root of the mean squared error",
}

CHECKLIST = (
    ("model", "A clear description of the mathematical setting, algorithm, and/or model"),
    ("complexity", "An analysis of the complexity (time, space, sample size) of the algorithm"),
    ("code", "A link to downloadable source code, with specification of all dependencies"),
    ("data-collection", "A complete description of the data collection process, including sample size"),
    ("data-version", "A link to a downloadable version of the dataset (the exact data version)"),
    ("preprocessing", "An explanation of any data that were excluded, and all pre-processing steps"),
    ("hyperparameters", "The range of hyper-parameters considered, the method to select the best configuration, "
                        "and all hyper-parameters used"),
    ("splits", "An explanation of how samples were allocated for training / validation / testing"),
    ("runs", "The exact number of training and evaluation runs"),
    ("how-run", "A description of how experiments were run"),
    ("seeds", "The random seeds used"),
    ("metrics", "A clear definition of the specific measure or statistics used to report results"),
    ("variation", "Results with central tendency (e.g. mean) and variation (e.g. standard deviation)"),
    ("compute", "The compute used (wall time, CPU time, peak memory)"),
    ("infrastructure", "A description of the computing infrastructure used"),
    ("framework", "The framework and library versions"),
)


# --------------------------------------------------------------------------- small helpers


def _get(data: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = data
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _first(*values: Any) -> Any:
    for v in values:
        if v not in (None, "", {}, []):
            return v
    return None


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NOT_RECORDED
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{int(value)} B" if unit == "B" else f"{size:.1f} {unit} ({int(value)} B)"


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NOT_RECORDED
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min ({value:.0f} s)"


def _cell(value: Any) -> str:
    text = _num(value) if isinstance(value, int | float) else ("" if value is None else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _kv(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v) if isinstance(v, int | float) else json.dumps(v) if not isinstance(v, str) else v}"
                     for k, v in values.items())


def _manifest(data: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(data.get("package"), Mapping):
        return dict(data["package"])
    where = data.get("packageDir")
    if where:
        path = Path(where) / "cdl-package.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                return {}
    return {}


# --------------------------------------------------------------------------- sections


def per_class(class_names: Sequence[str], matrix: Sequence[Sequence[int]]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of each class from a confusion matrix."""
    out: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(class_names):
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def metric_definition(name: str, entrypoint: str | None) -> str:
    key = name.lower().removeprefix("validation_").removeprefix("test_").removeprefix("val_")
    if key in METRIC_DEFINITIONS:
        return METRIC_DEFINITIONS[key]
    where = f"the evaluation entrypoint {entrypoint}" if entrypoint else "the evaluation entrypoint"
    return f"computed by {where}; not described further"


def _trial_stats(values: Any) -> dict[str, float] | None:
    nums = [float(v) for v in values or [] if isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(float(v))]
    if len(nums) < 2:
        return None
    mean = sum(nums) / len(nums)
    std = math.sqrt(sum((v - mean) ** 2 for v in nums) / (len(nums) - 1))
    return {"n": len(nums), "mean": mean, "std": std, "min": min(nums), "max": max(nums)}


class _Facts:
    """Everything the report knows, gathered once from the input and the package manifest."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.manifest = _manifest(data)
        m = self.manifest
        self.model = _first(data.get("model"), m.get("name")) or "model"
        self.version = _first(data.get("version"), m.get("version"))
        self.resource = data.get("resource")
        self.stage = data.get("stage")
        self.metrics: dict[str, Any] = dict(data.get("metrics") or {})
        self.gates: list[dict[str, Any]] = [dict(g) for g in data.get("gates") or []]
        self.passed = data.get("passed")
        self.class_names: list[str] = list(data.get("classNames") or [])
        self.confusion: list[list[int]] | None = data.get("confusion")
        self.lineage: dict[str, Any] = dict(_first(data.get("lineage"), m.get("lineage")) or {})
        self.artifact: dict[str, Any] = dict(data.get("artifact") or {})
        self.compressed: dict[str, Any] | None = data.get("compressed")
        exp = data.get("experiment") if isinstance(data.get("experiment"), Mapping) else {}
        self.exp_spec: dict[str, Any] = dict(_first(_get(exp, "spec"), _get(m, "experiment", "spec")) or {})
        self.exp_status: dict[str, Any] = dict(_get(exp, "status") or {})
        self.hparams: dict[str, Any] = dict(_first(data.get("hparams"), m.get("hparams"),
                                                   _get(self.exp_status, "bestTrial", "hparams")) or {})
        self.requirements: list[str] = list(_first(data.get("requirements"), m.get("requirements")) or [])
        self.description: dict[str, Any] = dict(_first(data.get("modelDescription"), m.get("model")) or {})
        # The package's own words first, else what the training runtime saw of the model.
        self.framework = _first(data.get("framework"), m.get("framework"), self.description.get("framework"))
        self.framework_version = _first(data.get("frameworkVersion"), m.get("frameworkVersion"),
                                        self.description.get("framework_version"))
        self.training: dict[str, Any] = dict(_first(data.get("training"), m.get("training")) or {})
        self.trials: Any = _first(data.get("trials"), m.get("trials"), self.exp_status.get("trials"))
        self.environment: dict[str, Any] = dict(_first(data.get("environment"), m.get("environment")) or {})
        self.evaluation: dict[str, Any] = dict(data.get("evaluation") or {})
        self.data_info: dict[str, Any] = dict(_first(data.get("data"), m.get("data")) or {})
        self.entrypoints: dict[str, Any] = dict(m.get("entrypoints") or {})
        self.created = _first(data.get("created"), m.get("created"))
        self.checkpoint_meta: dict[str, Any] = dict(m.get("checkpoint") or {})
        self.python = _first(_get(self.environment, "python"), m.get("python"))

    @property
    def eval_entrypoint(self) -> str | None:
        return _first(self.evaluation.get("entrypoint"), self.entrypoints.get("evaluate"))

    def data_ref(self) -> str | None:
        d = self.lineage.get("data") or {}
        if isinstance(d, Mapping) and d.get("repo") and d.get("commit"):
            return f"{d['repo']}@{d['commit']}"
        return None


# --------------------------------------------------------------------------- reproducibility


def _answers(f: _Facts) -> list[dict[str, str]]:
    m, d = f.manifest, f.data
    answers: dict[str, tuple[str, str]] = {}

    def put(key: str, parts: Sequence[str | None], full: bool = True) -> None:
        text = "; ".join(p for p in parts if p)
        answers[key] = (text or NOT_RECORDED, ("recorded" if full else "partial") if text else NOT_RECORDED)

    desc = f.description
    put("model", [
        f"{f.framework} model" + (f" {desc['model_class']}" if desc.get("model_class") else "") if f.framework else None,
        f"{desc['parameters']} parameters ({desc.get('trainable_parameters', '?')} trainable)"
        if desc.get("parameters") is not None else None,
        f"{desc['layer_count']} layers: " + ", ".join(f"{x.get('name')} {x.get('type')}" for x in
                                                       (desc.get("layers") or [])[:12])
        if desc.get("layer_count") else None,
        f"trial entrypoint {f.entrypoints['trial']}" if f.entrypoints.get("trial") else None,
        f"hyperparameters {_kv(f.hparams)}" if f.hparams else None,
    ], full=bool(desc))

    tr = f.training
    put("complexity", [
        f"training wall time {_seconds(tr.get('wallSeconds'))}" if tr.get("wallSeconds") is not None else None,
        f"peak memory {_bytes(tr.get('peakRssBytes'))}" if tr.get("peakRssBytes") is not None else None,
        f"{desc['parameters']} parameters" if desc.get("parameters") is not None else None,
        f"package {_bytes(f.artifact.get('bytes'))}" if f.artifact.get("bytes") is not None else None,
        f"inference {_num(f.evaluation['latencyMsPerExample'])} ms per example"
        if f.evaluation.get("latencyMsPerExample") is not None else None,
        f"{f.data_info.get('train', {}).get('files')} training examples"
        if _get(f.data_info, "train", "files") is not None else None,
    ], full=False)

    code = f.lineage.get("code") or {}
    put("code", [
        f"package {f.artifact.get('uri')} (sha256 {str(f.artifact.get('sha256', ''))[:16]})" if f.artifact.get("uri") else None,
        f"git commit {code.get('gitCommit')}" + (f" of {code['gitUrl']}" if code.get("gitUrl") else "")
        if code.get("gitCommit") else None,
        f"code bundle sha256 {code.get('bundleSha256')} ({code.get('bundleUri')})" if code.get("bundleSha256") else None,
        f"image {code.get('image')}" if code.get("image") else None,
        f"code sha256 {str(m.get('codeSha256'))[:16]}" if m.get("codeSha256") else None,
        f"pinned requirements: {', '.join(f.requirements)}" if f.requirements else None,
    ])

    train = f.data_info.get("train") or {}
    labels = f.lineage.get("trainLabels") or {}
    source = _get(f.data_info, "pipeline", "source") or {}
    put("data-collection", [
        f"source {source.get('uri')} ({source.get('format', 'files')})" if source.get("uri") else None,
        f"training data {f.data_ref()}" if f.data_ref() else None,
        f"{train.get('files')} training files ({_bytes(train.get('bytes'))})" if train.get("files") is not None else None,
        f"examples per label: {_kv(labels)}" if labels else None,
    ], full=bool(source))

    test = f.data_info.get("test") or _get(f.evaluation, "data") or {}
    put("data-version", [
        f"training data pfs://{f.data_ref()}" if f.data_ref() else None,
        f"evaluation data pfs://{test.get('repo')}@{test.get('commit')}" if test.get("repo") and test.get("commit") else None,
    ])

    steps = _get(f.data_info, "pipeline", "steps") or []
    put("preprocessing", [
        "steps: " + "; ".join(f"{s.get('name')}: {' '.join(map(str, s.get('command') or []))}" for s in steps)
        if steps else None,
    ])

    space = f.exp_spec.get("hyperparameters") or {}
    searcher = f.exp_spec.get("searcher") or {}
    put("hyperparameters", [
        f"search space {_kv(space)}" if space else None,
        f"searcher {searcher.get('name')} on {searcher.get('metric')}"
        f" ({'smaller' if searcher.get('smallerIsBetter') else 'larger'} is better, "
        f"at most {searcher.get('maxTrials', 1)} trials)" if searcher.get("name") else None,
        f"used {_kv(f.hparams)}" if f.hparams else None,
    ], full=bool(space and searcher and f.hparams))

    split = _get(f.data_info, "pipeline", "split") or {}
    put("splits", [
        f"test fraction {split.get('test')}, seed {split.get('seed')}, stratified {split.get('stratify', False)}"
        if split else None,
        f"trained on {f.data_ref()}" if f.data_ref() else None,
        f"evaluated on {f.evaluation.get('examples') or _get(test, 'files')} examples"
        + (f" of {test.get('repo')}@{test.get('commit')}" if test.get("repo") else "")
        if f.evaluation.get("examples") or _get(test, "files") else None,
    ], full=bool(split))

    trials = f.trials
    trial_text = None
    if isinstance(trials, Mapping) and trials:
        trial_text = "trials: " + _kv(trials)
    elif isinstance(trials, int):
        trial_text = f"{trials} trials"
    evals = 1 + (1 if f.compressed else 0) if f.metrics else 0
    put("runs", [
        trial_text,
        f"experiment run {f.lineage.get('run')}" if f.lineage.get("run") else None,
        f"{evals} evaluation run(s) of this version" + (" (original and compressed)" if f.compressed else "")
        if evals else None,
    ], full=bool(trial_text))

    resources = f.exp_spec.get("resources") or {}
    length = searcher.get("maxLength") or {}
    put("how-run", [
        f"Experiment {f.lineage.get('experiment')}" + (f" on the {f.exp_spec.get('engine')} engine"
                                                       if f.exp_spec.get("engine") else "")
        if f.lineage.get("experiment") else None,
        f"trial {f.lineage.get('trial')}, checkpoint {f.lineage.get('checkpoint')}" if f.lineage.get("trial") else None,
        f"trained for {_kv(length)}" if length else None,
        f"steps completed {_get(f.checkpoint_meta, 'determined', 'steps_completed')}"
        if _get(f.checkpoint_meta, "determined", "steps_completed") is not None else None,
        f"{resources.get('slotsPerTrial', 1)} slot(s) per trial" if resources else None,
        f"evaluated with {f.eval_entrypoint}" if f.eval_entrypoint else None,
    ])

    seed = f.exp_spec.get("seed")
    put("seeds", [
        f"experiment seed {seed} (on the local engine trial n gets seed {seed} + n - 1)" if seed is not None else None,
        f"split seed {split.get('seed')}" if split.get("seed") is not None else None,
        f"evaluation seed {d.get('evaluationSeed', 0)}" if f.metrics else None,
    ], full=seed is not None)

    put("metrics", [f"{k}: {metric_definition(k, f.eval_entrypoint)}" for k in sorted(f.metrics)])

    stats = _trial_stats(d.get("trialMetrics"))
    metric_name = searcher.get("metric") or "the searcher metric"
    put("variation", [
        f"{metric_name} over {stats['n']} trials of the search (different hyperparameters): mean "
        f"{_num(stats['mean'])}, standard deviation {_num(stats['std'])}, range {_num(stats['min'])}"
        f"-{_num(stats['max'])}" if stats else None,
    ], full=False)

    put("compute", [
        f"wall {_seconds(tr.get('wallSeconds'))}" if tr.get("wallSeconds") is not None else None,
        f"CPU {_seconds(tr.get('cpuSeconds'))}" if tr.get("cpuSeconds") is not None else None,
        f"peak memory {_bytes(tr.get('peakRssBytes'))}" if tr.get("peakRssBytes") is not None else None,
        f"GPU utilization {_num(tr.get('gpuUtilization'))}" if tr.get("gpuUtilization") is not None else None,
        f"evaluation {_seconds(f.evaluation.get('evalSeconds'))}" if f.evaluation.get("evalSeconds") is not None else None,
    ], full=tr.get("wallSeconds") is not None and tr.get("peakRssBytes") is not None)

    env = f.environment
    put("infrastructure", [
        f"platform {env.get('platform')}" if env.get("platform") else None,
        f"machine {env.get('machine')}" if env.get("machine") else None,
        f"GPU requested: {resources.get('gpu')}" if "gpu" in resources else None,
        f"resource pool {resources.get('resourcePool')}" if resources.get("resourcePool") else None,
    ], full=bool(env.get("platform")))

    pins = [r for r in f.requirements if r.split("==")[0].lower() in ("torch", "tensorflow", "tensorflow-cpu",
                                                                      "keras", "determined", "numpy")]
    put("framework", [
        f"{f.framework} {f.framework_version}" if f.framework and f.framework_version else f.framework,
        f"Python {f.python}" if f.python else None,
        ", ".join(pins) if pins else None,
    ])

    return [{"id": key, "question": question, "answer": answers[key][0], "status": answers[key][1]}
            for key, question in CHECKLIST]


# --------------------------------------------------------------------------- model card


def _model_card(f: _Facts) -> dict[str, Any]:
    names = f.class_names
    task = (f"classify each input into one of {len(names)} classes ({', '.join(names)})" if names
            else "the task its evaluation entrypoint measures")
    data_ref = f.data_ref()
    intended = f.data.get("intendedUse") or (
        f"{f.model} version {f.version} is a {f.framework or 'machine-learning'} model trained to {task}"
        + (f" on {data_ref}" if data_ref else "") + (f" by Experiment {f.lineage.get('experiment')}"
                                                     if f.lineage.get("experiment") else "")
        + ". Use it for inputs like its training data; out-of-scope uses: not recorded.")
    return {
        "modelDetails": {
            "name": f.model, "version": f.version, "stage": f.stage, "resource": f.resource,
            "framework": f"{f.framework or NOT_RECORDED} {f.framework_version or ''}".strip(),
            "architecture": f.description.get("model_class") or NOT_RECORDED,
            "parameters": f.description.get("parameters", NOT_RECORDED),
            "created": f.created or NOT_RECORDED,
            "artifact": f.artifact or NOT_RECORDED,
        },
        "intendedUse": intended,
        "trainingData": data_ref or NOT_RECORDED,
        "trainingLabels": f.lineage.get("trainLabels") or NOT_RECORDED,
        "evaluationData": (f"{_get(f.evaluation, 'data', 'repo')}@{_get(f.evaluation, 'data', 'commit')}"
                           if _get(f.evaluation, "data", "repo") else NOT_RECORDED),
        "hyperparameters": f.hparams or NOT_RECORDED,
        "metrics": f.metrics or NOT_RECORDED,
        "limitations": f.data.get("limitations") or NOT_RECORDED,
        "ethicalConsiderations": f.data.get("ethicalConsiderations") or NOT_RECORDED,
    }


# --------------------------------------------------------------------------- rendering


def render_report(data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(Markdown, JSON-ready dict) of a version's evaluation report."""
    f = _Facts(data)
    generated = data.get("generated") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    confusion = None
    if f.confusion:
        names = f.class_names or [str(i) for i in range(len(f.confusion))]
        confusion = {"classNames": names, "matrix": f.confusion, "perClass": per_class(names, f.confusion)}
    checklist = _answers(f)
    card = _model_card(f)
    report: dict[str, Any] = {
        "title": f"{f.model} version {f.version}",
        "generated": generated,
        "model": f.model,
        "version": f.version,
        "resource": f.resource,
        "stage": f.stage,
        "evaluation": {**{k: v for k, v in f.evaluation.items() if k not in ("confusion", "classNames")},
                       "metrics": f.metrics, "passed": f.passed, "gates": f.gates, "confusion": confusion,
                       "entrypoint": f.eval_entrypoint},
        "metricDefinitions": {k: metric_definition(k, f.eval_entrypoint) for k in sorted(f.metrics)},
        "compression": f.compressed,
        "lineage": f.lineage,
        "artifact": f.artifact,
        "modelCard": card,
        "reproducibility": checklist,
    }
    return _markdown(f, report), report


def _markdown(f: _Facts, report: dict[str, Any]) -> str:
    verdict = {True: "PASSED", False: "REJECTED", None: "not evaluated"}[f.passed if f.passed in (True, False) else None]
    out = [f"# {report['title']}", ""]
    out += [f"- Resource: {f.resource or NOT_RECORDED}", f"- Stage: {f.stage or NOT_RECORDED}",
            f"- Evaluation gate: **{verdict}**", f"- Generated: {report['generated']}", ""]

    out += ["## Metrics", ""]
    if f.metrics:
        out += _table(["metric", "value", "definition"],
                      [[k, v, metric_definition(k, f.eval_entrypoint)] for k, v in sorted(f.metrics.items())])
    else:
        out.append(NOT_RECORDED)
    out.append("")

    out += ["## Gates", ""]
    if f.gates:
        out += _table(["metric", "rule", "value", "threshold", "result"],
                      [[g.get("metric"), g.get("rule") or "", g.get("value"), g.get("threshold"),
                        "pass" if g.get("passed") else "FAIL"] for g in f.gates])
    else:
        out.append("No gates: spec.evaluation.gates is empty (production needs a passed gate).")
    out.append("")

    conf = report["evaluation"]["confusion"]
    if conf:
        names, matrix = conf["classNames"], conf["matrix"]
        out += ["## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
        out += _table(["true \\ predicted", *names], [[n, *row] for n, row in zip(names, matrix, strict=False)])
        out += ["", "### Per class", ""]
        out += _table(["class", "precision", "recall", "F1", "support"],
                      [[n, c["precision"], c["recall"], c["f1"], c["support"]] for n, c in conf["perClass"].items()])
        out.append("")

    if f.compressed:
        c = f.compressed
        orig, comp = c.get("original") or {}, c.get("compressed") or {}
        out += [f"## Compression ({c.get('method')})", ""]
        rows = [["weights size", _bytes(orig.get("weightsBytes")), _bytes(comp.get("weightsBytes")),
                 f"x{_num(c.get('sizeRatio'), 3)}" if c.get("sizeRatio") else ""],
                ["package size", _bytes(orig.get("packageBytes")), _bytes(comp.get("packageBytes")), ""],
                ["latency (ms/example)", orig.get("latencyMsPerExample"), comp.get("latencyMsPerExample"),
                 f"speed-up x{_num(c.get('latencySpeedup'), 2)}" if c.get("latencySpeedup") else ""]]
        for k, v in sorted((orig.get("metrics") or {}).items()):
            change = (c.get("metricChange") or {}).get(k)
            rows.append([k, v, (comp.get("metrics") or {}).get(k), f"{change:+.4f}" if change is not None else ""])
        out += _table(["", "original", "compressed", "change"], rows)
        out += ["", f"Quantized layers: {', '.join(c.get('quantizedModules') or []) or NOT_RECORDED}.", ""]

    out += ["## Lineage", ""]
    lin = f.lineage
    data_ref = lin.get("data") or {}
    code = lin.get("code") or {}
    out += _table(["", "value"], [
        ["experiment", lin.get("experiment") or NOT_RECORDED],
        ["run", lin.get("run") or NOT_RECORDED],
        ["trial", lin.get("trial") or NOT_RECORDED],
        ["checkpoint", lin.get("checkpoint") or NOT_RECORDED],
        ["data", f"{data_ref.get('repo')}@{data_ref.get('commit')}" if data_ref.get("repo") else NOT_RECORDED],
        ["code git commit", code.get("gitCommit") or NOT_RECORDED],
        ["code bundle", f"{code.get('bundleUri')} (sha256 {code.get('bundleSha256')})" if code.get("bundleSha256")
         else NOT_RECORDED],
        ["image", code.get("image") or NOT_RECORDED],
        ["artifact", f"{f.artifact.get('uri')} (sha256 {f.artifact.get('sha256')})" if f.artifact.get("uri")
         else NOT_RECORDED],
    ])
    out.append("")

    card = report["modelCard"]
    details = card["modelDetails"]
    out += ["## Model card", "", "### Model details", ""]
    out += [f"- Name: {details['name']}, version {details['version']}",
            f"- Framework: {details['framework']}", f"- Architecture: {details['architecture']}",
            f"- Parameters: {details['parameters']}", f"- Created: {details['created']}", ""]
    out += ["### Intended use", "", str(card["intendedUse"]), ""]
    out += ["### Training data", "", f"- Data: {card['trainingData']}"]
    labels = card["trainingLabels"]
    out += [f"- Examples per label: {_kv(labels) if isinstance(labels, Mapping) else labels}", ""]
    out += ["### Evaluation data", "", f"- {card['evaluationData']}", ""]
    out += ["### Hyperparameters", ""]
    out += _table(["name", "value"], sorted(f.hparams.items())) if f.hparams else [NOT_RECORDED]
    out += ["", "### Limitations and ethical considerations", "",
            f"- Limitations: {card['limitations']}", f"- Ethical considerations: {card['ethicalConsiderations']}", ""]

    out += ["## Reproducibility", "",
            "The NeurIPS reproducibility checklist items the platform can answer (ModelKB, Table 3).", ""]
    out += _table(["item", "answer", "status"], [[a["question"], a["answer"], a["status"]]
                                                  for a in report["reproducibility"]])
    out.append("")
    return "\n".join(out)
