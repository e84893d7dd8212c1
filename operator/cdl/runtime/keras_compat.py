"""Determined's Keras callback on Keras 3.

`determined.keras` (0.38.1) imports its deprecated TFKerasTrial, which needs Keras 2 internals
(`keras.src.saving.legacy`), so `import determined.keras` fails next to TensorFlow 2.16+ and
Keras 3. The callback itself (`determined/keras/_callback.py`) needs none of that: this module
loads it on its own when the package import fails, and adapts its checkpoint file name to
Keras 3, which insists that weights files end in `.weights.h5`, and its resume point to Keras
3's `fit()`, which reads `model._initial_epoch`.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from cdl.runtime.determined_private import KERAS_CALLBACK_MODULE

_MODULE = KERAS_CALLBACK_MODULE
WEIGHTS = "model_checkpoint.weights.h5"


def _callback_module() -> ModuleType:
    try:
        from determined.keras import _callback

        return _callback
    except ImportError:
        pass
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    from cdl.runtime.determined_private import keras_callback_source

    path = keras_callback_source()
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module  # our post-import hooks (metadata) see it like the real thing
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(_MODULE, None)
        raise
    from cdl.runtime.determined_hooks import keras_callback_loaded

    keras_callback_loaded(module)
    return module


def _keras3() -> bool:
    try:
        import keras

        return int(keras.__version__.split(".")[0]) >= 3
    except (ImportError, ValueError):
        return False


def callback_class() -> type:
    """`DeterminedCallback`, subclassed on Keras 3 to save `model_checkpoint.weights.h5`."""
    base: Any = _callback_module().DeterminedCallback
    if not _keras3():
        return base

    class DeterminedCallback(base):  # type: ignore[misc, valid-type]
        """Determined's callback with Keras 3's weights file naming (same checkpoint layout)."""

        def save_model(self, model: Any, path: str, distributed: Any) -> None:
            super().save_model(model, str(Path(path).with_name(WEIGHTS)), distributed)

        def load_model(self, model: Any, path: str, distributed: Any) -> None:
            model.load_weights(str(Path(path).with_name(WEIGHTS)))

        def _load_training_state(self, path: Path) -> None:
            # Keras 3's fit() starts at `model._initial_epoch` (what BackupAndRestore sets); the
            # Keras 2 hook Determined sets (`model._training_state`) is no longer read.
            super()._load_training_state(path)
            state_path = Path(path) / "callback_state"
            if state_path.exists():
                with state_path.open("rb") as fh:
                    state = pickle.load(fh)
                if state.get("continue_id") == self._continue_id:
                    self.model._initial_epoch = int(state["epoch"]) + 1

    return DeterminedCallback
