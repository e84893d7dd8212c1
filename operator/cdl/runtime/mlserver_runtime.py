"""The Open Inference Protocol (V2) fast path: `CdlRuntime`, an MLServer custom runtime.

It serves the same predictor class as the Seldon wrapper through the same `CdlPredictor`
(package fetch, predictor import, input checks), so both protocols give the same predictions.
MLServer runs it from `model-settings.json`:

    {"name": "<deployment>", "implementation": "cdl.runtime.mlserver_runtime.CdlRuntime",
     "max_batch_size": 32, "max_batch_time": 0.002,
     "parameters": {"uri": "<package folder, archive or URI>", "version": "<model version>",
                    "extra": {"predictor": "module:Class"}}}

or, on a cluster, from `MLSERVER_MODEL_*` variables (the Seldon engine renders them). Requests
carry one input: `BYTES` (one text per row) or numbers of shape `[rows, ...]`; the answer is one
output, `label` (`BYTES`) when the model answers labels, else `output` (numbers), with the model's
time and example count in the response `parameters` (the router counts them for Prometheus).
With adaptive batching MLServer merges concurrent requests along the first dimension, calls
`predict` once and hands each caller its own rows.

Runs in MLServer's environment: imports mlserver, numpy and `cdl.runtime` only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, Parameters

from cdl.runtime.serving import EXAMPLES_TAG, MODEL_MS_TAG, CdlPredictor, InvalidInput


class CdlRuntime(MLModel):
    """MLServer model around a ModelVersion package's predictor class."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra = dict((params.extra if params else None) or {})
        self.predictor = CdlPredictor(
            model_package=(params.uri if params else None) or None,
            predictor=extra.get("predictor") or None,
            model_version=(params.version if params else None) or extra.get("model_version") or None,
            cache_dir=extra.get("cache_dir") or None,
        )
        self.predictor.load()  # a failure is logged with the load-error mark and raised
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise InferenceError(f"send exactly one input (the examples, one row each), got {len(payload.inputs)}")
        rows = _rows(payload.inputs[0])
        try:
            out = self.predictor.predict_rows(rows)
        except InvalidInput as exc:
            raise InferenceError(str(exc)) from None
        if out and all(isinstance(o, str) for o in out):
            output = StringCodec.encode_output("label", out)
        else:
            try:
                output = NumpyCodec.encode_output("output", np.asarray(out))
            except (TypeError, ValueError) as exc:
                raise InferenceError(f"the model's answer is neither labels nor numbers: {exc}") from None
        figures = Parameters(**{MODEL_MS_TAG: round(self.predictor._last_ms, 4), EXAMPLES_TAG: len(out)})
        return InferenceResponse(model_name=self.name, model_version=self.predictor.model_version or None,
                                 id=payload.id, outputs=[output], parameters=figures)


def _rows(request_input: Any) -> list[Any]:
    """One V2 input as a list of rows: texts for BYTES, number rows otherwise."""
    if request_input.datatype == "BYTES":
        return list(StringCodec.decode_input(request_input))
    try:
        array = NumpyCodec.decode_input(request_input)
    except Exception as exc:  # shape and data disagree, unknown datatype
        raise InferenceError(f"input {request_input.name!r}: {exc}") from None
    if array.ndim == 0:
        raise InferenceError(f"input {request_input.name!r} must have a first dimension (one row per example)")
    return array.tolist()
