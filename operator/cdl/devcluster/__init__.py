"""The embedded Kubernetes-compatible control plane.

A generic API server (discovery, OpenAPI, CRUD, watch, CRDs, server-side semantics) backed by
SQLite, so that kubectl, helm, kopf and the `kubernetes` Python client work on a machine with no
cluster. It knows nothing of cdl's own kinds: those arrive as CustomResourceDefinitions.

Entry points: `python -m cdl.devcluster serve` (the server process) and `cdl.devcluster.process`
(start, stop and find a server from Python or the CLI).
"""

from __future__ import annotations
