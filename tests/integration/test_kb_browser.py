"""The dashboard in a real browser (Debian's headless chromium driven by selenium), reached the
way a user reaches it: `cdl dashboard`'s gateway -> the devcluster's service proxy -> the
knowledge base over real PostgreSQL; promote through the Kubernetes API; inference answered by
a real model server. Screenshots are saved in the test's tmp dir and checked for content."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from tests.plugins.kb import EXPERIMENT, NS
from tests.plugins.serving import served

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromedriver are needed: bash scripts/install-browser.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Gateway:
    """`cdl dashboard`'s gateway on a free loopback port, on its own event loop."""

    def __init__(self, kubeconfig: str) -> None:
        from cdl.kb.gateway import Upstream, serve

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        upstream = Upstream.from_kubeconfig(kubeconfig)
        self.runner, self.port = asyncio.run_coroutine_threadsafe(
            serve(upstream, "127.0.0.1", 0, None), self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def platform(kb_records, cdl_crds, k8s_client, kubectl, serving_deploy, serving_packages):
    """Records, CRDs, the ModelVersion and Deployment resources, a real model server behind the
    Deployment, the knowledge base as a Service, and the gateway."""
    from kubernetes import client

    from cdl.kb.api import KB, serve_in_thread
    from cdl.kb.catalog import Catalog
    from cdl.kb.service import deployment_endpoint, register_endpoint

    core = client.CoreV1Api(k8s_client)
    if NS not in [n.metadata.name for n in core.list_namespace().items]:
        core.create_namespace({"metadata": {"name": NS}})
    manifests = [
        {"apiVersion": "cdl.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "news-v1", "namespace": NS},
         "spec": {"model": "news", "source": {"experimentRef": {"name": EXPERIMENT}}, "stage": "production"}},
        {"apiVersion": "cdl.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": "news", "namespace": NS},
         "spec": {"modelVersionRef": {"name": "news-v1"}, "predictor": "serve:NumpyLinearPredictor"}},
    ]
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    _, status = serving_deploy(f"kb-{uuid.uuid4().hex[:6]}", [served(serving_packages["v1"])])
    kubectl("patch", "deployments.cdl.dev", "news", "-n", NS, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"url": status.url, "phase": "Available"}}))

    kb = KB(Catalog(kb_records.database, kb_records.artifacts),
            endpoint=lambda ns, name: deployment_endpoint(ns, name, api_client=k8s_client))
    kb_served = serve_in_thread(kb)
    service_ns = f"kb-{uuid.uuid4().hex[:6]}"
    register_endpoint(service_ns, "cdl-kb", kb_served.port, api_client=k8s_client)
    gateway = Gateway(str(cdl_crds.kubeconfig))
    try:
        yield f"http://127.0.0.1:{gateway.port}/api/v1/namespaces/{service_ns}/services/cdl-kb:http/proxy/ui/"
    finally:
        gateway.close()
        kb_served.stop()


def shot(driver, tmp_path: Path, name: str, must_show: list[str]) -> Path:
    """Save a screenshot, then check the page shows what it should and the PNG is a real picture."""
    from PIL import Image

    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    text = driver.find_element("tag name", "body").text
    for fragment in must_show:
        assert fragment in text, f"{name}: {fragment!r} not on the page:\n{text[:2000]}"
    image = Image.open(path)
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert image.size[0] >= 1000
    assert path.stat().st_size > 20_000 and len(colours) > 50, f"{name}: a blank-looking screenshot"
    return path


def wait(driver, condition, timeout: float = 20):
    """Until `condition` holds; elements replaced by a page load meanwhile are looked up again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(NoSuchElementException,
                                                              StaleElementReferenceException)).until(condition)


def expected_class(package, row: list[float]) -> str:
    """What the model server should answer, computed here from the package's own weights."""
    import numpy as np

    checkpoint = package.dir / "checkpoint"
    names = json.loads((checkpoint / "class_names.json").read_text())
    with np.load(checkpoint / "weights.npz") as w:
        return names[int((np.asarray([row], dtype=np.float32) @ w["weight"].T + w["bias"]).argmax(axis=1)[0])]


def test_dashboard_in_chromium(browser, platform, kubectl, serving_packages, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    # Projects and recent experiments.
    browser.get(platform)
    shot(browser, tmp_path, "1-home", ["Projects", "news", EXPERIMENT, f"{NS}/news"])

    # The trial table, a query, the column chooser.
    browser.find_element(By.LINK_TEXT, EXPERIMENT).click()
    wait(browser, ec.presence_of_element_located((By.ID, "trials")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) == 4
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys("epochs > 10 && optimizer = Adam && accuracy > 0.9")
    browser.find_element(By.CSS_SELECTOR, "#query-form button").click()
    wait(browser, lambda d: "2 trial(s) match" in d.find_element(By.ID, "match-count").text)
    rows = browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")
    assert [r.get_attribute("data-trial") for r in rows] == ["10", "2"]
    browser.find_element(By.CSS_SELECTOR, "#columns summary").click()
    browser.find_element(By.CSS_SELECTOR, ".col-toggle[value='resources.peakRssBytes']").click()
    assert browser.find_element(By.CSS_SELECTOR, "#trials td[data-col='resources.peakRssBytes']").is_displayed()
    assert "cols=" in browser.current_url and "peakRssBytes" in browser.current_url
    shot(browser, tmp_path, "2-query", ["2 trial(s) match", "300 MiB", "Adam"])

    # Compare two trials side by side.
    for pick in browser.find_elements(By.CSS_SELECTOR, "#trials .pick"):
        pick.click()
    browser.find_element(By.ID, "compare-button").click()
    wait(browser, ec.presence_of_element_located((By.ID, "comparison")))
    differing = [r.find_element(By.TAG_NAME, "th").text
                 for r in browser.find_elements(By.CSS_SELECTOR, "#comparison tr.differs")]
    assert {"hp.lr", "accuracy", "wall s"} <= set(differing)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) == 10  # 3 metrics + 2 resources, x2
    shot(browser, tmp_path, "3-compare", ["Trials 10, 2 side by side", "trial 10", "trial 2"])

    # The report: confusion matrix, lineage; then promote through the Kubernetes API.
    browser.get(platform + "models/news/versions/1")
    wait(browser, ec.presence_of_element_located((By.ID, "confusion")))
    cells = browser.find_elements(By.CSS_SELECTOR, "#confusion td.diag")
    assert [c.text for c in cells] == ["40", "35", "39"]
    lineage = browser.find_element(By.ID, "lineage").text
    assert "news-train@c0ffee" in lineage and EXPERIMENT in lineage and f"{NS}/news" in lineage
    shot(browser, tmp_path, "4-report", ["Confusion matrix", "business", "Lineage", "EmbeddingBag"])
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "promote-stage")).select_by_visible_text("staging")
    browser.find_element(By.ID, "promote").click()
    wait(browser, lambda d: "spec.stage is now staging" in d.find_element(By.ID, "action-result").text)
    out = kubectl("get", "modelversions.cdl.dev", "news-v1", "-n", NS, "-o", "jsonpath={.spec.stage}")
    assert out.stdout == "staging"
    # the gateway refuses a change that does not come from the dashboard's script
    import urllib.error
    import urllib.request

    origin = platform.split("/api/")[0]
    req = urllib.request.Request(f"{origin}/apis/cdl.dev/v1alpha1/namespaces/{NS}/modelversions/news-v1",
                                 data=b'{"spec": {"stage": "archived"}}', method="PATCH",
                                 headers={"Content-Type": "application/merge-patch+json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403
    shot(browser, tmp_path, "5-promoted", ["spec.stage is now staging"])

    # Deployment monitoring and an inference through the form (a CSV row of four features).
    browser.get(platform + f"deployments/{NS}/news")
    wait(browser, ec.presence_of_element_located((By.ID, "inference-form")))
    Select(browser.find_element(By.ID, "inference-kind")).select_by_value("csv")
    field = browser.find_element(By.ID, "inference-input")
    field.send_keys("2.5,-1.0,0.3,1.2")
    browser.find_element(By.ID, "predict").click()
    wait(browser, lambda d: '"status": 200' in d.find_element(By.ID, "inference-result").text, 60)
    answer = json.loads(browser.find_element(By.ID, "inference-result").text)
    assert answer["response"]["data"]["ndarray"] == [expected_class(serving_packages["v1"], [2.5, -1.0, 0.3, 1.2])]
    shot(browser, tmp_path, "6-deployment", ["18 requests, 1 errors", "requests per minute", "Remote call"])
    print(f"screenshots in {tmp_path}")
