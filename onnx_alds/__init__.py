"""onnx-alds: compress exported ONNX models by grouped low-rank decomposition (ALDS)."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import OnnxAldsError  # noqa: E402

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from .api import METHODS, CompressionResult, analyze, compress  # noqa: F401

__all__ = ["__version__", "METHODS", "CompressionResult", "OnnxAldsError", "analyze", "compress"]

_FROM_API = ("METHODS", "CompressionResult", "analyze", "compress")
_SUBMODULES = ("allocate", "api", "argtypes", "bench", "calibrate", "checks", "cli", "damage", "data_aware", "decompose",
               "demo", "distill", "errors", "inputs", "latency", "layers", "model_io", "options", "plan", "prune",
               "report", "rewrite", "runtime", "shapes", "spectra", "speed", "sweep", "validate")


def __getattr__(name: str) -> object:
    """``onnx_alds.compress`` and the rest of the API load on first use (PEP 562): the command line starts
    without importing numpy, scipy and onnx first, so a Ctrl-C while they load is answered like any other."""
    if name in _FROM_API:
        from . import api

        return getattr(api, name)
    if name in _SUBMODULES:  # onnx_alds.validate.validate(...) after a bare `import onnx_alds`
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'onnx_alds' has no attribute '{name}'")


def _callable_module(module_name: str, function_name: str) -> None:
    """Make the submodule ``module_name`` callable as its function ``function_name``: ``onnx_alds.validate(...)``
    and ``onnx_alds.bench(...)``, as the API is named (the design's names), beside ``onnx_alds.validate.validate``
    and ``from onnx_alds.validate import validate``, which stay what they are."""
    import inspect
    import sys
    import types

    module = sys.modules[module_name]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    CallableModule.__call__.__doc__ = f"``{function_name}(...)`` of this module"
    module.__class__ = CallableModule
    module.__signature__ = inspect.signature(getattr(module, function_name))  # (help() and IDEs show its arguments)


def __dir__() -> list[str]:
    """The public names, the lazy ones included (tab completion, ``help(onnx_alds)``)."""
    return sorted(set(__all__) | set(_SUBMODULES))
