"""The dashboard: server-rendered pages over the knowledge base (Jinja2, inline SVG charts, one
small script and one stylesheet shipped in the package; nothing from a CDN).

Every link is relative, so the pages work wherever they are mounted: on the knowledge base's own
port, or behind the API server's service proxy (/api/v1/namespaces/NS/services/NAME:PORT/proxy/).
Actions that change resources (promote, deploy) are made by the browser against the Kubernetes
API of the page's own origin (`cdl dashboard` or `kubectl proxy`), under the user's credentials;
the knowledge base itself never writes a resource.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from cdl.kb.catalog import Catalog, Page
from cdl.kb.charts import line_chart

HERE = Path(__file__).parent
ENV = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))


def _num(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 100_000:
        return f"{value:,}"
    return str(value)


def _when(value: Any) -> str:
    if not value:
        return "–"
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def _mib(value: Any) -> str:
    return "–" if value is None else f"{value / 2**20:.0f} MiB"


ENV.filters.update(num=_num, when=_when, mib=_mib, tojson_compact=lambda v: json.dumps(v, default=str))


def render(request: web.Request, template: str, **context: Any) -> web.Response:
    """A page; `root` is the relative way back to the knowledge base's root from this URL."""
    depth = max(0, len([s for s in request.path.split("/") if s]) - (0 if request.path.endswith("/") else 1))
    root = "../" * depth or "./"
    html = ENV.get_template(template).render(root=root, request=request, **context)
    return web.Response(text=html, content_type="text/html")


CATALOG_KEY: web.AppKey[Catalog] = web.AppKey("kb-catalog", Catalog)
DEPLOYMENT_KEY: web.AppKey[Any] = web.AppKey("kb-deployment-reader", object)


def _catalog(request: web.Request) -> Catalog:
    return request.app[CATALOG_KEY]


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


# --- pages -------------------------------------------------------------------------------------

async def home(request: web.Request) -> web.Response:
    catalog = _catalog(request)
    projects = await _run(catalog.projects)
    experiments = await _run(catalog.experiments, None, Page(limit=20))
    deployments = await _run(catalog.deployments)
    return render(request, "home.html", projects=projects, experiments=experiments["items"],
                  deployments=deployments)


def trial_columns(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, label) of every column the trials have: hyperparameters, metrics, model, resources."""
    cols: list[tuple[str, str]] = [("trial", "trial"), ("state", "state")]
    for group, label in (("hparams", "hp"), ("metrics", "metric")):
        seen: list[str] = []
        for t in items:
            seen.extend(k for k in t[group] if k not in seen)
        cols.extend((f"{group}.{k}", f"{k}" if group == "metrics" else f"{label}.{k}") for k in seen)
    cols += [("model.parameters", "parameters"), ("resources.wallSeconds", "wall s"),
             ("resources.cpuSeconds", "cpu s"), ("resources.peakRssBytes", "peak memory"), ("stopReason", "stop")]
    return cols


def cell(trial: dict[str, Any], key: str) -> str:
    value: Any = trial
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return _mib(value) if key == "resources.peakRssBytes" else _num(value)


async def experiment(request: web.Request) -> web.Response:
    m, q = request.match_info, request.query
    catalog = _catalog(request)
    runs = await _run(catalog.runs, m["ns"], m["name"])
    query = q.get("q", "")
    error = None
    try:
        trials = await _run(catalog.trials, m["ns"], m["name"], run_id=q.get("run") or None, query=query,
                            page=Page(limit=500))
    except Exception as exc:  # noqa: BLE001 - a bad query is shown beside the box, not a dead page
        from cdl.kb.query import QueryError

        if not isinstance(exc, QueryError):
            raise
        error = str(exc)
        trials = await _run(catalog.trials, m["ns"], m["name"], run_id=q.get("run") or None, page=Page(limit=500))
        trials["items"] = []
    columns = trial_columns(trials["items"])
    default = [c for c, _ in columns if c.startswith(("trial", "state", "hparams", "metrics.")) or c.endswith("wallSeconds")]
    shown = [c for c in q.get("cols", "").split(",") if c] or default
    run = next(r for r in runs if r["run_id"] == trials["run"])
    return render(request, "experiment.html", ns=m["ns"], name=m["name"], runs=runs, run=run, trials=trials,
                  query=query, error=error, columns=columns, shown=shown, cell=cell,
                  live=run["state"] in ("active", "running", "queued", "pending", "submitted"))


async def study(request: web.Request) -> web.Response:
    """A finished search replayed under each early-stopping rule (`cdl experiments study`): the
    per-rule table, the recorded curves the replay walks, and the study's plot."""
    import importlib.util

    from cdl.engines.training import study as replay
    from cdl.errors import CdlError

    m, q = request.match_info, request.query
    catalog = _catalog(request)
    runs = await _run(catalog.runs, m["ns"], m["name"])
    run = next((r for r in runs if r["run_id"] == q.get("run")), runs[0])
    search = await _run(replay.from_database, catalog.db, run["run_id"])
    try:
        data = await _run(replay.report, search)
    except CdlError as exc:  # not finished, nothing recorded: said on the page
        data, error = None, str(exc)
    else:
        error = None
    curves = {f"trial {t.trial_id}": [(p.units, p.value) for p in t.curve.scored()] for t in search.trials}
    chart = Markup(line_chart(curves, title=f"recorded {search.metric} per trial", x_label=search.unit,
                              y_label=search.metric))
    return render(request, "study.html", ns=m["ns"], name=m["name"], run=run, search=search, data=data,
                  error=error, chart=chart, plot=importlib.util.find_spec("matplotlib") is not None)


def _curves(trials: list[dict[str, Any]], kind: str, metric: str, x: str = "batches") -> dict[str, list]:
    out: dict[str, list] = {}
    for t in trials:
        pts = []
        start = None
        for p in t["series"][kind]:
            if metric not in (p.get("metrics") or {}):
                continue
            if x == "time":
                at = datetime.fromisoformat(p["recorded_at"])
                start = start or at
                xv = (at - start).total_seconds()
            else:
                xv = p["batches"]
            pts.append((xv, p["metrics"][metric]))
        out[f"trial {t['trial']} {kind}" if len(trials) > 1 else kind] = pts
    return out


def metric_names(trials: list[dict[str, Any]], kind: str) -> list[str]:
    names: list[str] = []
    for t in trials:
        for p in t["series"][kind]:
            names.extend(k for k in (p.get("metrics") or {}) if k not in names)
    return names


def resource_charts(trials: list[dict[str, Any]]) -> list[Markup]:
    """Memory, CPU time and GPU use over time (the local engine samples them every few seconds)."""
    def points(t: dict[str, Any], key: str, scale: float = 1.0) -> list[tuple[float, float]]:
        series = (t.get("resources") or {}).get("series") or []
        start = series[0]["at"] if series else 0
        return [(p["at"] - start, p[key] / scale) for p in series if p.get(key) is not None]

    label = (lambda t: f"trial {t['trial']}") if len(trials) > 1 else (lambda t: "trial")
    charts = []
    for key, title, scale, unit in (("rssBytes", "memory (MiB)", 2**20, "MiB"), ("cpuSeconds", "CPU time (s)", 1, "s"),
                                    ("gpuUtilization", "GPU utilisation (%)", 1, "%")):
        series = {label(t): points(t, key, scale) for t in trials}
        if any(series.values()):
            charts.append(Markup(line_chart(series, title=title, x_label="seconds since the trial started",
                                            y_label=unit)))
    return charts


def trial_charts(trials: list[dict[str, Any]], x: str) -> list[Markup]:
    charts = []
    x_label = "seconds since the first report" if x == "time" else "batches"
    for kind in ("validation", "training"):
        for name in metric_names(trials, kind):
            charts.append(Markup(line_chart(_curves(trials, kind, name, x), title=f"{kind} {name}",
                                            x_label=x_label, y_label=name)))
    return charts


async def trial(request: web.Request) -> web.Response:
    m = request.match_info
    t = await _run(_catalog(request).trial, m["run"], m["trial"])
    x = "time" if request.query.get("x") == "time" else "batches"
    return render(request, "trial.html", t=t, charts=trial_charts([t], x), x=x, resources=resource_charts([t]))


async def compare(request: web.Request) -> web.Response:
    m = request.match_info
    wanted = [t for t in request.query.get("trials", "").split(",") if t]
    if len(wanted) < 2:
        raise web.HTTPBadRequest(text="trials: choose at least two trials to compare, e.g. ?trials=2,3")
    trials = [await _run(_catalog(request).trial, m["run"], t) for t in wanted]
    rows = compare_rows(trials)
    return render(request, "compare.html", run=m["run"], trials=trials, rows=rows,
                  charts=trial_charts(trials, "batches") + resource_charts(trials))


def compare_rows(trials: list[dict[str, Any]]) -> list[tuple[str, list[str], bool]]:
    """(field, values per trial, values differ?) for every field any of the trials has."""
    columns = trial_columns(trials)[1:]
    rows = []
    for key, label in columns:
        values = [cell(t, key) for t in trials]
        rows.append((label, values, len(set(values)) > 1))
    return rows


async def model(request: web.Request) -> web.Response:
    m, q = request.match_info, request.query
    query = q.get("q", "")
    error = None
    try:
        versions = await _run(_catalog(request).model_versions, namespace=m["ns"], model=m["model"], query=query,
                              page=Page(limit=500))
    except Exception as exc:  # noqa: BLE001
        from cdl.kb.query import QueryError

        if not isinstance(exc, QueryError):
            raise
        error, versions = str(exc), {"items": [], "total": 0}
    metrics: list[str] = []
    for v in versions["items"]:
        metrics.extend(k for k in (v.get("metrics") or {}) if k not in metrics)
    return render(request, "model.html", ns=m["ns"], model=m["model"], versions=versions, query=query, error=error,
                  metrics=metrics)


async def compare_versions(request: web.Request) -> web.Response:
    m = request.match_info
    wanted = [v for v in request.query.get("versions", "").split(",") if v.isdigit()]
    if len(wanted) < 2:
        raise web.HTTPBadRequest(text="versions: choose at least two versions to compare, e.g. ?versions=1,2")
    versions = [await _run(_catalog(request).model_version, m["ns"], m["model"], int(v)) for v in wanted]
    fields: list[tuple[str, list[str], bool]] = []

    def add(label: str, values: list[Any]) -> None:
        shown = [_num(v) for v in values]
        fields.append((label, shown, len(set(shown)) > 1))

    add("stage", [v["stage"] for v in versions])
    add("resource", [v["resource"] for v in versions])
    names: list[str] = []
    for v in versions:
        names.extend(k for k in (v.get("metrics") or {}) if k not in names)
    for n in names:
        add(n, [(v.get("metrics") or {}).get(n) for v in versions])
    add("gates passed", [v.get("passed") for v in versions])
    add("trial", [(v.get("lineage") or {}).get("trial") for v in versions])
    add("data commit", [((v.get("lineage") or {}).get("data") or {}).get("commit") for v in versions])
    add("artifact bytes", [v.get("artifact_bytes") for v in versions])
    add("created", [_when(v.get("created_at")) for v in versions])
    return render(request, "compare_versions.html", ns=m["ns"], model=m["model"], versions=versions, rows=fields)


async def version(request: web.Request) -> web.Response:
    m = request.match_info
    try:
        number = int(m["version"])
    except ValueError:
        raise web.HTTPBadRequest(text=f"version: {m['version']!r} is not a version number") from None
    v = await _run(_catalog(request).model_version, m["ns"], m["model"], number)
    report = v.get("report") or {}
    confusion = ((report.get("evaluation") or {}).get("confusion")) or None
    peak = max((max(row) for row in confusion["matrix"]), default=1) if confusion else 1
    lineage = v.get("lineage") or {}
    layers: list[dict[str, Any]] = []
    if lineage.get("runId") and lineage.get("trial") is not None:  # the trial's recorded architecture
        from cdl.kb.catalog import NotFound

        try:
            trained = await _run(_catalog(request).trial, lineage["runId"], str(lineage["trial"]))
            layers = (trained.get("model") or {}).get("layers") or []
        except NotFound:
            layers = []
    return render(request, "version.html", v=v, report=report, confusion=confusion, peak=peak or 1,
                  layers=layers)


async def deployment(request: web.Request) -> web.Response:
    m = request.match_info
    d = await _run(_catalog(request).deployment, m["ns"], m["name"], bucket_seconds=60)
    series = d["series"]
    start = datetime.fromisoformat(series[0]["at"]) if series else None

    def pts(key: str) -> list[tuple[float, float]]:
        return [((datetime.fromisoformat(p["at"]) - start).total_seconds() / 60, p[key]) for p in series]

    charts = [
        Markup(line_chart({"requests": pts("requests"), "errors": pts("errors")}, title="requests per minute",
                          x_label="minutes")),
        Markup(line_chart({"p50": pts("p50_ms"), "p99": pts("p99_ms")}, title="latency (ms)", x_label="minutes",
                          y_label="ms")),
    ]
    reader = request.app[DEPLOYMENT_KEY]
    status = (await _run(reader, m["ns"], m["name"]) if reader else None) or {}
    return render(request, "deployment.html", ns=m["ns"], name=m["name"], d=d, charts=charts,
                  endpoint=status.get("url"), phase=status.get("phase"), traffic=status.get("traffic") or [],
                  monitoring=status.get("monitoring") or {})


async def to_home(request: web.Request) -> web.Response:
    raise web.HTTPFound("ui/")


def add_routes(app: web.Application, catalog: Catalog, deployment_reader: Any = None) -> None:
    app[CATALOG_KEY] = catalog
    app[DEPLOYMENT_KEY] = deployment_reader
    r = app.router
    r.add_get("/", to_home)
    r.add_get("/ui/", home)
    r.add_get("/ui/experiments/{ns}/{name}", experiment)
    r.add_get("/ui/experiments/{ns}/{name}/study", study)
    r.add_get("/ui/runs/{run}/trials/{trial}", trial)
    r.add_get("/ui/runs/{run}/compare", compare)
    r.add_get("/ui/namespaces/{ns}/models/{model}", model)
    r.add_get("/ui/namespaces/{ns}/models/{model}/compare", compare_versions)
    r.add_get("/ui/namespaces/{ns}/models/{model}/versions/{version}", version)
    r.add_get("/ui/deployments/{ns}/{name}", deployment)
    r.add_static("/ui/static/", HERE / "static", show_index=False)
