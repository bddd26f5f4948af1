"""Tessera's cooperative torch hook (see `tessera.gpushare.cooperative`); runs at interpreter start-up.

It must never break a task: every failure is reported on stderr and otherwise ignored.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_CONFIG_ENV = "TESSERA_COOPERATIVE_FILE"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _warn(message: str) -> None:
    sys.stderr.write(f"tessera cooperative hook: {message}\n")


def _fractions() -> dict[int, float]:
    path = os.environ.get(_CONFIG_ENV)
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return {int(k): float(v) for k, v in doc.get("fractions", {}).items()}


def apply(torch: ModuleType) -> None:
    """Cap each visible GPU's allocator, once CUDA is initialised (never initialising it here)."""
    fractions = _fractions()
    cuda: Any = getattr(torch, "cuda", None)
    if not fractions or cuda is None:
        return

    def cap() -> None:
        try:
            count = cuda.device_count()
            for index, share in sorted(fractions.items()):
                if index < count:
                    cuda.set_per_process_memory_fraction(share, index)
        except Exception as exc:  # the task's own work matters more than the courtesy
            _warn(f"could not set the memory fraction: {exc}")

    lazy = getattr(cuda, "_lazy_call", None)
    if cuda.is_initialized() or lazy is None:
        cap()
    else:
        lazy(cap)  # runs when the task first initialises CUDA (forked workers stay CUDA-free)


class _Loader(importlib.abc.Loader):
    """Torch's own loader, followed by `apply`; anything else is the wrapped loader's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        created: ModuleType | None = self._inner.create_module(spec)
        return created

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        try:
            apply(module)
        except Exception as exc:
            _warn(str(exc))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TorchFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when torch is first imported, wraps the real spec's loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once: the real finders answer from now on
        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def _chain() -> None:
    """Run the sitecustomize this one shadows (a virtualenv's, a distribution's), if any."""
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if os.environ.get(_CONFIG_ENV):
    sys.meta_path.insert(0, _TorchFinder())
try:
    _chain()
except Exception as exc:
    _warn(f"the next sitecustomize failed: {exc}")
