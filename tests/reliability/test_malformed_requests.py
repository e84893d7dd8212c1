"""1,000 malformed prediction requests through a Deployment's URL (the real router and seldon
model server): every one is answered 4xx with a message saying what is wrong, none reaches the
model, none gets a 5xx; the counts are printed per category. The router reads no body on the way
through, so the model server itself must refuse every one of them (never predict on garbage):
the same corpus is sent to it directly, around the router."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter, defaultdict

import pytest

from tests.plugins.serving import served
from tests.reliability.fuzz import GOOD_ROW, malformed_requests

pytestmark = pytest.mark.slow


def _send(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["status"]["info"])
    except (ValueError, KeyError, TypeError):
        return ""


def test_1000_malformed_requests_get_a_4xx_naming_the_mistake(serving_packages, serving_deploy,
                                                               serving_engine) -> None:
    key, status = serving_deploy("fuzzed", [served(serving_packages["v1"])], sample_rate=0.0)
    assert _send(status.url, json.dumps({"data": {"ndarray": [GOOD_ROW]}}).encode())[0] == 200

    by_category: dict[str, Counter[int]] = defaultdict(Counter)
    wrong: list[tuple[str, bytes, int, str]] = []
    for category, body in malformed_requests(1000):
        code, text = _send(status.url, body)
        by_category[category][code] += 1
        if not (400 <= code < 500 and _message(text)):
            wrong.append((category, body[:200], code, text[:200]))
    total = Counter()
    for counts in by_category.values():
        total.update(counts)
    print(f"\n1000 malformed prediction requests: {dict(sorted(total.items()))}")
    for category, counts in sorted(by_category.items()):
        print(f"  {category:32s} {dict(sorted(counts.items()))}")
    assert sum(total.values()) == 1000
    assert not wrong, f"{len(wrong)} not answered 4xx with a message, e.g. {wrong[:5]}"

    # the model server alone: it refuses each one too (4xx), so no malformed request is predicted on
    server = next(iter(serving_engine._deployments[key.slug].state.servers.values()))
    direct = f"http://127.0.0.1:{server['http_port']}/api/v1.0/predictions"
    predicted = Counter()
    for category, body in malformed_requests(1000):
        code, text = _send(direct, body)
        if not 400 <= code < 500:
            predicted[(category, code)] += 1
    print(f"  sent to the model server directly: {1000 - sum(predicted.values())} of 1000 answered 4xx")
    assert not predicted, f"the model server answered these without a 4xx: {dict(predicted)}"
