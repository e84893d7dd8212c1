"""The stores layer: PostgreSQL records and artifact stores. Nothing here knows about Kubernetes.

- `cdl.stores.artifacts`: `open_artifact_store(url, s3)` -> a filesystem or S3/MinIO
  `ArtifactStore`; `download_uri(uri, dest, s3)` for any file:// or s3:// uri.
- `cdl.stores.postgres`: `Database(url)` with `migrate()` and one typed method per record
  (labels, experiment runs and trials, model versions, lineage, scoring data); rows are the
  dataclasses of `cdl.stores.records`.
- `cdl.stores.embedded_postgres`: `EmbeddedPostgres(data_dir)` for the embedded platform and tests.

Names are re-exported here lazily, so importing the artifact stores does not need psycopg.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArtifactStore": "cdl.stores.artifacts",
    "S3Settings": "cdl.stores.artifacts",
    "StoredArtifact": "cdl.stores.artifacts",
    "download_uri": "cdl.stores.opener",
    "open_artifact_store": "cdl.stores.opener",
    "ArtifactError": "cdl.stores.errors",
    "ArtifactIntegrityError": "cdl.stores.errors",
    "ArtifactNotFound": "cdl.stores.errors",
    "InvalidArtifactKey": "cdl.stores.errors",
    "InvalidTableName": "cdl.stores.errors",
    "MigrationError": "cdl.stores.errors",
    "RecordNotFound": "cdl.stores.errors",
    "StoreError": "cdl.stores.errors",
    "StoreUnavailable": "cdl.stores.errors",
    "Database": "cdl.stores.postgres",
    "EmbeddedPostgres": "cdl.stores.embedded_postgres",
    "ExperimentRun": "cdl.stores.records",
    "LabelRow": "cdl.stores.records",
    "LineageEdge": "cdl.stores.records",
    "ModelVersionRecord": "cdl.stores.records",
    "ScoringRow": "cdl.stores.records",
    "TrialMetric": "cdl.stores.records",
    "TrialRecord": "cdl.stores.records",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cdl.stores' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
