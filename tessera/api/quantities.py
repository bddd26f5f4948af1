"""Quantities in Kubernetes spellings and durations in human spellings.

Memory is stored internally in MiB (integers). Accepted forms: plain
MiB-less byte counts are refused on purpose; users write a unit:
``512Mi``, ``10Gi``, ``10GiB``, ``1Ti``, ``500M``, ``2G`` (decimal units are
converted and rounded up to whole MiB).
"""

from __future__ import annotations

import re
from datetime import timedelta

MEMORY_FORM = "a quantity like 512Mi, 10Gi or 10GiB (units Ki, Mi, Gi, Ti, K, M, G, T)"
DURATION_FORM = "a duration like 90s, 30m, 2h or 1d (or a combination such as 1h30m)"

_MIB = 1024 * 1024
MAX_MEMORY_MIB = 1024 * 1024 * 1024  # 1 PiB: far above any machine, far below overflow
_UNITS: dict[str, int] = {
    "ki": 1024,
    "mi": _MIB,
    "gi": 1024 * _MIB,
    "ti": 1024 * 1024 * _MIB,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)(?:B)?\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class QuantityError(ValueError):
    """A value that is not in the accepted spelling."""


def parse_memory_mib(value: str | int) -> int:
    """Parse a memory quantity into whole MiB (rounded up).

    An ``int`` is taken as MiB already (the internal unit).
    """
    if isinstance(value, bool):
        raise QuantityError(f"expected {MEMORY_FORM}")
    if isinstance(value, int):
        if value < 0:
            raise QuantityError(f"must not be negative; expected {MEMORY_FORM}")
        if value > MAX_MEMORY_MIB:
            raise QuantityError(f"{value} MiB is larger than the maximum of 1024Ti")
        return value
    match = _QUANTITY.match(value)
    if match is None:
        if value.strip().startswith("-"):
            raise QuantityError(f"must not be negative; expected {MEMORY_FORM}")
        raise QuantityError(f"{value!r} is not {MEMORY_FORM}")
    number, unit = match.groups()
    total_bytes = float(number) * _UNITS[unit.lower()]
    if total_bytes > MAX_MEMORY_MIB * _MIB:
        raise QuantityError(f"{value!r} is larger than the maximum of {MAX_MEMORY_MIB // 1024**2}Ti")
    return int(-(-total_bytes // _MIB))


def format_mib(mib: int) -> str:
    """Render MiB in the shortest exact Kubernetes spelling."""
    if mib and mib % (1024 * 1024) == 0:
        return f"{mib // (1024 * 1024)}Ti"
    if mib and mib % 1024 == 0:
        return f"{mib // 1024}Gi"
    return f"{mib}Mi"


MAX_DURATION = timedelta(days=3650)


def parse_duration(value: str | int | float) -> timedelta:
    """Parse ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``; a bare number is seconds (max 3650d)."""
    delta = _parse_duration(value)
    if delta > MAX_DURATION:
        raise QuantityError(f"{value!r} is longer than the maximum of 3650d")
    return delta


def _parse_duration(value: str | int | float) -> timedelta:
    if isinstance(value, bool):
        raise QuantityError(f"expected {DURATION_FORM}")
    if isinstance(value, int | float):
        if value < 0 or value != value:
            raise QuantityError(f"must not be negative; expected {DURATION_FORM}")
        return timedelta(seconds=min(float(value), MAX_DURATION.total_seconds() + 1))
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=min(float(text), MAX_DURATION.total_seconds() + 1))
    pos = 0
    seconds = 0.0
    for part in _DURATION_PART.finditer(text):
        if part.start() != pos:
            break
        seconds += float(part.group(1)) * _DURATION_SECONDS[part.group(2)]
        seconds = min(seconds, MAX_DURATION.total_seconds() + 1)  # no timedelta overflow
        pos = part.end()
    if not text or pos != len(text):
        raise QuantityError(f"{value!r} is not {DURATION_FORM}")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a duration compactly (``1h30m``, ``45s``)."""
    total = int(delta.total_seconds())
    if total == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            out.append(f"{total // size}{unit}")
            total %= size
    return "".join(out)
