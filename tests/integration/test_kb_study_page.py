"""The dashboard's early-stopping study page in a real browser (Debian's headless chromium driven
by selenium) over the knowledge base on real PostgreSQL: reached from the experiment's page, it
shows per rule what `cdl experiments study` computes from the same records, the recorded curves
and the study's plot. The screenshot is saved in the test's tmp dir and checked for content."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_kb_browser import browser, shot, wait  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.slow

NS, NAME, EPOCHS = "ml", "news-random", 10
ENDS = [0.90, 0.55, 0.86, 0.93, 0.60, 0.70, 0.88, 0.65]  # trial 3 wins


def record_search(database) -> str:
    """A finished random search of 8 trials x 10 epochs, as the local engine records it."""
    from cdl.stores.records import ExperimentRun, TrialMetric, TrialRecord

    run_id = f"{NS}.{NAME}.g1"
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    spec = {"searcher": {"name": "random", "metric": "accuracy", "smallerIsBetter": False, "maxTrials": len(ENDS),
                         "maxLength": {"epochs": EPOCHS}}}
    database.record_run(ExperimentRun(run_id=run_id, namespace=NS, experiment=NAME, engine="local",
                                      state="succeeded", generation=1, spec=spec, started_at=t0))
    for i, end in enumerate(ENDS):
        curve = [round(end - 0.4 * (end - 0.3) * x ** -0.8 + 0.004 * ((7 * i + x) % 3 - 1), 4)
                 for x in range(1, EPOCHS + 1)]
        database.record_trial(TrialRecord(
            run_id=run_id, trial_id=str(i), state="succeeded", hparams={"lr": 10 ** -(1 + i % 4)},
            best_metric=max(curve), cpu_seconds=2.0 * EPOCHS, wall_seconds=2.5 * EPOCHS,
            metadata={"units_done": EPOCHS, "unit": "epochs", "resources_at_validations": [
                {"batches": 100 * x, "units": x, "cpu_seconds": 2.0 * x, "wall_seconds": 2.5 * x,
                 "peak_rss_bytes": 300 * 2**20} for x in range(1, EPOCHS + 1)]}))
        database.record_metrics([
            TrialMetric(run_id=run_id, trial_id=str(i), kind="validation", batches=100 * x, epoch=float(x),
                        metrics={"accuracy": v}, recorded_at=t0 + timedelta(minutes=10 * i + x))
            for x, v in enumerate(curve, start=1)])
    return run_id


def test_study_page_in_chromium(browser, database, tmp_path):  # noqa: F811 - the imported fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from cdl.engines.training import study
    from cdl.kb.api import KB, serve_in_thread
    from cdl.kb.catalog import Catalog

    run_id = record_search(database)
    expected = {r["rule"]: r for r in study.report(study.from_database(database, run_id))["items"]}
    assert expected["predict"]["trial_epochs"] < expected["none"]["trial_epochs"] == EPOCHS * len(ENDS)
    served = serve_in_thread(KB(Catalog(database)))
    try:
        browser.get(f"http://127.0.0.1:{served.port}/ui/experiments/{NS}/{NAME}")
        wait(browser, ec.presence_of_element_located((By.ID, "study-link"))).click()
        wait(browser, ec.presence_of_element_located((By.ID, "study")))
        assert f"/ui/experiments/{NS}/{NAME}/study?run=" in browser.current_url

        # One row per rule, with the figures the study computes from the same records.
        rows = {r.get_attribute("data-rule"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
                for r in browser.find_elements(By.CSS_SELECTOR, "#study tbody tr")}
        assert list(rows) == list(study.RULES)
        for rule, cells in rows.items():
            assert cells[2] == f"{expected[rule]['trial_epochs']:g}", (rule, cells)
            assert cells[3] == f"{expected[rule]['epochs_vs_none'] * 100:.0f}%", (rule, cells)
            assert cells[8] == str(expected[rule]["stopped_trials"])
            assert cells[9] == ("yes" if expected[rule]["winner_stopped"] else "no")
        assert rows["none"][3] == "100%" and rows["predict"][9] == "no"

        # The recorded curves (inline SVG, a line per trial) and the study's plot (a loaded PNG).
        assert len(browser.find_elements(By.CSS_SELECTOR, ".charts svg polyline")) == len(ENDS)
        plot = browser.find_element(By.ID, "study-plot")
        wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot))
        assert browser.execute_script("return arguments[0].naturalWidth", plot) > 800
        shot(browser, tmp_path, "study", ["Early-stopping study of ml/news-random", "predict", "asha", "median",
                                          "winner stopped", run_id])
    finally:
        served.stop()
