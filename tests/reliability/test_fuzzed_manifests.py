"""120 generated manifests (the BBC use case's, and each kind of mistake an author or an attacker
makes: nesting thousands deep, 1 MB strings, 5,000-item lists, wrong types, unknown fields,
duplicate keys ...) through the API server and `cdl validate`: the valid ones are created; the
ones no schema may accept (too deep, duplicate keys, bad names, no spec) are refused with a 4xx
naming what is wrong; a mutation the structural schema cannot see (inside the free-form
hyperparameters, say) may be created, for the operator to fail on the field; nothing gets a 5xx,
the server keeps answering, and `cdl validate` checks the folder to the end, reporting every
file the server refused and none of the valid ones."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cdl.api.kinds import BY_KIND
from cdl.cli.main import app
from cdl.devcluster import process
from cdl.devcluster.tls import client_context
from tests.reliability.fuzz import MANIFEST_FILES, generated_manifests

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _post(info: process.ServerInfo, namespace: str, body: bytes) -> tuple[int, str]:
    found = re.search(rb'"kind": "(\w+)"', body)  # not parsed: some bodies nest too deep for Python's json
    kind = BY_KIND.get(found.group(1).decode()) if found else None
    plural = kind.plural if kind else "datapipelines"
    request = urllib.request.Request(f"{info.url}/apis/cdl.dev/v1alpha1/namespaces/{namespace}/{plural}", data=body,
                                     method="POST", headers={"Authorization": f"Bearer {info.token}",
                                                             "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60, context=client_context(info.ca_file)) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}").get("message", "")


def test_120_fuzzed_manifests_are_created_or_refused_with_a_4xx(cdl_crds, k8s, namespace, tmp_path) -> None:
    manifests = [yaml.safe_load((ROOT / "usecases/bbc-news/manifests" / f).read_text()) for f in MANIFEST_FILES]
    corpus = list(generated_manifests(manifests, 120))
    by_category: dict[str, Counter[int]] = defaultdict(Counter)
    always_refused = {"nested 150-3000 deep", "duplicate key", "bad name", "missing spec"}
    wrong, refused = [], set()
    for i, (category, body) in enumerate(corpus):
        code, message = _post(cdl_crds, namespace, body)
        by_category[category][code] += 1
        if category == "valid":
            ok = code == 201
        elif category in always_refused:
            ok = 400 <= code < 500 and bool(message)
        else:
            ok = code == 201 or (400 <= code < 500 and bool(message))
        if not ok:
            wrong.append((category, code, message[:200]))
        path = tmp_path / f"m{i:03d}-{category.split()[0]}.yaml"
        path.write_bytes(body)
        if code != 201:
            refused.add(str(path))
    total: Counter[int] = Counter()
    for counts in by_category.values():
        total.update(counts)
    print(f"\n{len(corpus)} fuzzed manifests through the API server: {dict(sorted(total.items()))}")
    for category, counts in sorted(by_category.items()):
        print(f"  {category:22s} {dict(sorted(counts.items()))}")
    assert not wrong, wrong[:5]
    assert process.healthy(cdl_crds.url, ca_file=cdl_crds.ca_file)

    result = CliRunner().invoke(app, ["validate", "-f", str(tmp_path)])
    flagged = {line.split(":")[0].split("#")[0] for line in result.output.splitlines() if line.startswith(str(tmp_path))}
    valid = {str(p) for p in tmp_path.glob("*-valid.yaml")}
    print(f"cdl validate over the folder: exit {result.exit_code}, {len(flagged)} files reported "
          f"({len(refused)} refused by the API server, {len(valid)} valid)")
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit))
    assert refused <= flagged and not flagged & valid
