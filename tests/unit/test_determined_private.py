"""cdl reaches private parts of determined through one adapter, written against one version: an
upgrade of determined fails here, naming that version, instead of somewhere inside a trial."""

import importlib

import pytest

from cdl.runtime import determined_private as private


def test_the_installed_determined_is_the_version_the_adapter_was_written_for():
    assert private.installed_version() == private.WRITTEN_FOR, (
        f"cdl.runtime.determined_private was written against determined {private.WRITTEN_FOR}; "
        f"{private.installed_version()} is installed: check every name in PRIVATE_NAMES and WRAPPED_METHODS"
    )


@pytest.mark.parametrize(("module", "name"), private.PRIVATE_NAMES)
def test_each_private_name_the_adapter_hands_out_exists(module, name):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone in determined " \
        f"{private.installed_version()} (written for {private.WRITTEN_FOR})"


@pytest.mark.parametrize(("module", "cls", "method"), private.WRAPPED_METHODS)
def test_each_wrapped_method_exists(module, cls, method):
    assert callable(getattr(getattr(importlib.import_module(module), cls), method, None)), (
        f"{module}.{cls}.{method} is gone in determined {private.installed_version()}")


def test_the_keras_callback_source_is_where_the_adapter_loads_it_from():
    source = private.keras_callback_source()
    assert source.is_file() and "class DeterminedCallback" in source.read_text()
