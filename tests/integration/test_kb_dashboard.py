"""The dashboard's pages as served (HTML over recorded runs); the browser test drives them."""

from __future__ import annotations

import re
import urllib.parse

from tests.plugins.kb import EXPERIMENT, NS


def page(kb_server, path: str) -> str:
    status, html, ctype = kb_server.get(path)
    assert status == 200 and ctype.startswith("text/html"), (status, html[:500] if isinstance(html, str) else html)
    return html


def test_home_lists_projects_experiments_deployments(kb_server):
    html = page(kb_server, "/ui/")
    assert 'href="../ui/models/news"' in html and f'href="../ui/experiments/{NS}/{EXPERIMENT}"' in html
    assert f'href="../ui/deployments/{NS}/news"' in html
    assert 'href="../ui/static/dashboard.css"' in html  # relative: works behind a service proxy too


def test_experiment_page_query_columns_and_exports(kb_server):
    q = urllib.parse.quote("epochs > 10 && optimizer = Adam && accuracy > 0.9")
    html = page(kb_server, f"/ui/experiments/{NS}/{EXPERIMENT}?q={q}")
    assert re.findall(r'<tr data-trial="(\w+)"', html) == ["10", "2"]
    assert 'data-col="hparams.optimizer"' in html and "format=csv" in html
    bad = page(kb_server, f"/ui/experiments/{NS}/{EXPERIMENT}?q=epochs%20%3E")
    assert 'id="query-error"' in bad and "ends too early" in bad


def test_trial_compare_version_deployment_pages(kb_server):
    run = kb_server.records.run_id
    trial = page(kb_server, f"/ui/runs/{run}/trials/2")
    # accuracy, loss (validation), loss (training), then memory and CPU time over time
    assert trial.count("<polyline") == 5 and 'aria-label="memory (MiB)"' in trial
    assert "EmbeddingBag" in trial and "[32, 128]" in trial and "input [32, 200]" in trial
    compare = page(kb_server, f"/ui/runs/{run}/compare?trials=10,2")
    assert compare.count('class="differs"') >= 3 and compare.count("<polyline") == 10
    version = page(kb_server, "/ui/models/news/versions/1")
    assert 'id="confusion"' in version and version.count("class=\"diag\"") == 3 and "news-train@c0ffee" in version
    versions = page(kb_server, "/ui/models/news/compare?versions=1,2")
    assert "v1" in versions and "v2" in versions and 'class="differs"' in versions
    deployment = page(kb_server, f"/ui/deployments/{NS}/news")
    assert "18 requests, 1 errors" in deployment and deployment.count("<polyline") == 4


def test_static_assets_ship_with_the_package(kb_server):
    status, js, _ = kb_server.get("/ui/static/dashboard.js")
    assert status == 200 and "X-Cdl-Dashboard" in js
    status, _, _ = kb_server.get("/ui/static/../api.py")
    assert status in (403, 404)
