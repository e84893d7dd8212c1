"""The local data engine: Pachyderm's model (repos, branches, immutable content-addressed commits,
provenance, datum-wise steps under the /pfs contract) on the local filesystem."""

from cdl.engines.data.local.engine import LocalDataEngine

__all__ = ["LocalDataEngine"]
