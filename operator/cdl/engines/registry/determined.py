"""The Determined registry engine: the package as every registry builds it (in the artifact store),
and the checkpoint registered as a version of the model in Determined's model registry."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from determined.common.api import bindings
from determined.common.api import errors as det_errors

from cdl.engines.base import RegisteredModel, RegistrationRequest
from cdl.engines.settings import DeterminedSettings
from cdl.engines.training.determined import DeterminedMaster, paged
from cdl.errors import PermanentEngineError

STAGE_PREFIX = "stage:"


class DeterminedRegistryEngine:
    """`RegistryEngine`: the package as the local registry builds it (in the artifact store), and
    the checkpoint registered as a version of the model in Determined's model registry."""

    name = "determined"

    def __init__(self, settings: DeterminedSettings, artifacts: Any, packager: Any | None = None,
                 root: Path | None = None) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.master = DeterminedMaster(settings)
        self._packager = packager
        self._root = root

    @property
    def packager(self) -> Any:
        if self._packager is None:
            from cdl.engines.registry.local import LocalRegistryEngine
            from cdl.stores.artifacts import s3_settings

            s = self.settings
            s3 = s3_settings(s.s3_endpoint_url, s.s3_access_key, s.s3_secret_key) if s.s3_access_key else None
            root = self._root or Path(tempfile.gettempdir()) / "cdl-determined-registry"
            self._packager = LocalRegistryEngine(root, self.artifacts, s3=s3)
        return self._packager

    def _url(self, model: str, version: int) -> str:
        return f"{self.settings.web_url}/det/models/{model}/versions/{version}"

    def _model(self, name: str, description: str) -> None:
        def ensure() -> None:
            try:
                bindings.get_GetModel(self.master.session, modelName=name)
            except det_errors.NotFoundException:
                body = bindings.v1PostModelRequest(
                    name=name, description=description, labels=["cdl"], metadata={"managedBy": "cdl"},
                    workspaceName=self.settings.workspace)
                bindings.post_PostModel(self.master.session, body=body)

        self.master.call(f"creating model {name} in Determined's registry", ensure)

    def _versions(self, model: str) -> list[bindings.v1ModelVersion]:
        def fetch(offset: int) -> bindings.v1GetModelVersionsResponse:
            return bindings.get_GetModelVersions(self.master.session, modelName=model, offset=offset)

        def read() -> list[bindings.v1ModelVersion]:
            try:
                return paged(fetch, "modelVersions")
            except det_errors.NotFoundException:
                return []

        return self.master.call(f"listing the versions of model {model}", read)

    def _find(self, model: str, version: int) -> bindings.v1ModelVersion | None:
        for mv in self._versions(model):
            if (getattr(mv, "metadata", None) or {}).get("cdlVersion") == version:
                return mv
        return None

    def register(self, request: RegistrationRequest) -> RegisteredModel:
        packaged = self.packager.register(request)
        model, version = request.model_name, int(request.version)
        self._model(model, f"cdl model {model}")
        found = self._find(model, version)
        if found is None:
            body = bindings.v1PostModelVersionRequest(
                checkpointUuid=request.checkpoint.uuid, modelName=model, name=f"v{version}",
                labels=[f"{STAGE_PREFIX}candidate"],
                metadata={"cdlVersion": version, "artifactUri": packaged.artifact_uri, "sha256": packaged.sha256,
                          "resource": str(request.key)},
                comment=f"registered by cdl for ModelVersion {request.key}",
            )

            def post() -> bindings.v1ModelVersion:
                try:
                    return bindings.post_PostModelVersion(self.master.session, body=body, modelName=model).modelVersion
                except det_errors.NotFoundException as exc:
                    raise PermanentEngineError(
                        f"Determined cannot register checkpoint {request.checkpoint.uuid} as {model} "
                        f"v{version}: {exc.message}") from None

            found = self.master.call(f"registering {model} version {version} in Determined", post)
        det_version = int(found.version)
        packaged.registry = {"engine": self.name, "id": f"{model}/{det_version}", "url": self._url(model, det_version)}
        return packaged

    def store_variant(self, model_name: str, version: int, variant: str, package_dir: Path) -> RegisteredModel:
        """A derived package (e.g. dynamic-int8) beside the version in the artifact store, and its
        location and hash in the Determined version's metadata (Determined has no variants)."""
        stored = self.packager.store_variant(model_name, version, variant, package_dir)
        found = self._find(model_name, version)
        if found is not None:
            metadata = dict(getattr(found, "metadata", None) or {})
            metadata.setdefault("variants", {})[variant] = {"artifactUri": stored.artifact_uri, "sha256": stored.sha256}
            body = bindings.v1PatchModelVersion(metadata=metadata)
            self.master.call(
                f"recording the {variant} variant of {model_name} version {version} in Determined",
                lambda: bindings.patch_PatchModelVersion(self.master.session, body=body, modelName=model_name,
                                                         modelVersionNum=int(found.version)),
            )
        return stored

    def set_stage(self, model_name: str, version: int, stage: str) -> None:
        self.packager.set_stage(model_name, version, stage)
        found = self._find(model_name, version)
        if found is None:
            return
        labels = [label for label in (found.labels or []) if not label.startswith(STAGE_PREFIX)]
        body = bindings.v1PatchModelVersion(labels=[*labels, f"{STAGE_PREFIX}{stage}"])
        self.master.call(
            f"moving {model_name} version {version} to {stage} in Determined",
            lambda: bindings.patch_PatchModelVersion(self.master.session, body=body, modelName=model_name,
                                                     modelVersionNum=int(found.version)),
        )

    def delete(self, model_name: str, version: int) -> None:
        found = self._find(model_name, version)
        if found is not None:
            def delete() -> None:
                with contextlib.suppress(det_errors.NotFoundException):
                    bindings.delete_DeleteModelVersion(self.master.session, modelName=model_name,
                                                       modelVersionNum=int(found.version))

            self.master.call(f"deleting {model_name} version {version} in Determined", delete)
        self.packager.delete(model_name, version)
