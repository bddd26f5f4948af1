"""Load an elastic job's training function from its entry point.

``package.module:function`` imports the module; ``path/to/train.py`` (function
``train``) or ``path/to/train.py:function`` loads a script, relative to the
working directory, and ships it to the Ray workers by value, so the workers
need not see the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_FUNCTION = "train"


class EntryError(Exception):
    """The entry point cannot be loaded; the message says why and what was expected."""


def split(entry: str) -> tuple[str, str]:
    """(module or script path, function name)."""
    target, sep, function = entry.rpartition(":")
    if not sep or (not target.endswith(".py") and "/" in function):
        return entry, DEFAULT_FUNCTION
    return target, function or DEFAULT_FUNCTION


def load(entry: str, cwd: Path | None = None) -> Callable[[dict[str, Any]], Any]:
    """The function ``entry`` names; EntryError if it cannot be had."""
    target, function = split(entry)
    if target.endswith(".py"):
        module = _load_script(Path(cwd or Path.cwd()) / target)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise EntryError(f"cannot import module {target!r} of entry {entry!r}: {exc}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise EntryError(f"entry {entry!r}: {target} has no function {function!r}")
    return fn


def _load_script(path: Path) -> Any:
    if not path.is_file():
        raise EntryError(f"entry script {str(path)!r} does not exist")
    name = f"tessera_entry_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntryError(f"cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    # the workers do not have the script: send its functions by value (Ray pickles with its own
    # copy of cloudpickle)
    for pickler in ("ray.cloudpickle", "cloudpickle"):
        try:
            importlib.import_module(pickler).register_pickle_by_value(module)
        except (ImportError, ValueError):
            continue
    return module
