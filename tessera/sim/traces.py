"""Readers for Alibaba's "openb" GPU-sharing traces (cluster-trace-gpu-v2023).

Two kinds of CSV file:

- a node list, columns ``sn,cpu_milli,memory_mib,gpu,model`` (``model`` may be empty on a node
  without GPUs);
- a pod list, columns ``name,cpu_milli,memory_mib,num_gpu,gpu_milli`` and, in most lists, also
  ``gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time`` (the ``multigpu*`` lists
  stop after ``gpu_milli``). Any subset of the optional columns is accepted, in any order.

``gpu_milli`` is the share of one GPU (1000 = a whole GPU) a pod takes on each of its ``num_gpu``
GPUs; a pod asking for more than one GPU must take whole GPUs. ``gpu_spec`` lists the GPU models a
pod accepts, ``|``-separated, empty meaning any. Times are seconds; an empty time is kept as -1.

Bad input raises :class:`TraceError`, whose message names the file, the 1-based line number and the
column (line 1 is the header).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

MILLI = 1000
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_REQUIRED = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
POD_OPTIONAL = ("gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time")
POD_TIMES = ("creation_time", "deletion_time", "scheduled_time")

IntArray = NDArray[np.int64]


class TraceError(ValueError):
    """A trace file that cannot be read; the message says where (file, line, column) and why."""

    def __init__(self, path: Path | str, line: int, column: str | None, problem: str) -> None:
        where = f"{path}:{line}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.column = column


@dataclass(frozen=True)
class NodeTable:
    """Nodes in file order: one entry per node in each array."""

    names: tuple[str, ...]
    cpu_milli: IntArray
    memory_mib: IntArray
    gpus: IntArray
    models: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class PodTable:
    """Pods in file order. ``gpu_spec``/``qos``/``pod_phase`` are "" and times -1 where absent."""

    names: tuple[str, ...]
    cpu_milli: IntArray
    memory_mib: IntArray
    num_gpu: IntArray
    gpu_milli: IntArray
    gpu_spec: tuple[str, ...]
    qos: tuple[str, ...]
    pod_phase: tuple[str, ...]
    creation_time: IntArray
    deletion_time: IntArray
    scheduled_time: IntArray
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_times(self) -> bool:
        """Whether the file had creation and deletion times (needed by the replay with departures)."""
        return "creation_time" in self.columns and "deletion_time" in self.columns

    def total_gpu_milli(self) -> int:
        return int((self.num_gpu * self.gpu_milli).sum())

    def allowed_models(self, i: int) -> tuple[str, ...]:
        """GPU models pod ``i`` accepts (empty: any); only GPU pods are restricted."""
        if self.num_gpu[i] == 0:
            return ()
        return split_models(self.gpu_spec[i])


def split_models(spec: str) -> tuple[str, ...]:
    """``"A|B||C"`` -> ``("A", "B", "C")``; empty parts are dropped, as the paper's simulator does."""
    return tuple(part for part in spec.split("|") if part)


def _header(path: Path, allowed: tuple[str, ...], required: tuple[str, ...]) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f), None)
    if not first:
        raise TraceError(path, 1, None, "empty file (no header)")
    header = [h.strip() for h in first]
    for name in header:
        if name not in allowed:
            raise TraceError(path, 1, name, f"unknown column (expected some of {', '.join(allowed)})")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise TraceError(path, 1, name, "column appears twice")
        seen.add(name)
    for name in required:
        if name not in seen:
            raise TraceError(path, 1, name, "required column is missing")
    return header


def _read(path: Path, header: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; a row with the wrong number of fields is an error."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise TraceError(path, line, None, f"{len(fields)} fields, header has {len(header)}")
            yield line, {k: v.strip() for k, v in zip(header, fields, strict=True)}


def _int(path: Path, line: int, column: str, text: str, *, empty: int | None = None) -> int:
    if text == "" and empty is not None:
        return empty
    try:
        value = int(text)
    except ValueError:
        raise TraceError(path, line, column, f"not an integer: {text!r}") from None
    if value < 0:
        raise TraceError(path, line, column, f"negative value: {value}")
    return value


def read_nodes(path: Path | str) -> NodeTable:
    """Read a node list (``sn,cpu_milli,memory_mib,gpu,model``)."""
    path = Path(path)
    header = _header(path, NODE_COLUMNS, NODE_COLUMNS)
    names: list[str] = []
    ints: dict[str, list[int]] = {"cpu_milli": [], "memory_mib": [], "gpu": []}
    models: list[str] = []
    seen: dict[str, int] = {}
    for line, row in _read(path, header):
        name = row["sn"]
        if not name:
            raise TraceError(path, line, "sn", "empty node name")
        if name in seen:
            raise TraceError(path, line, "sn", f"node {name!r} already on line {seen[name]}")
        seen[name] = line
        names.append(name)
        for column, values in ints.items():
            values.append(_int(path, line, column, row[column]))
        if ints["gpu"][-1] > 0 and not row["model"]:
            raise TraceError(path, line, "model", "a node with GPUs needs a GPU model")
        models.append(row["model"])
    return NodeTable(
        names=tuple(names),
        cpu_milli=np.array(ints["cpu_milli"], dtype=np.int64),
        memory_mib=np.array(ints["memory_mib"], dtype=np.int64),
        gpus=np.array(ints["gpu"], dtype=np.int64),
        models=tuple(models),
    )


def read_pods(path: Path | str) -> PodTable:
    """Read a pod list in either layout (with or without the columns after ``gpu_milli``)."""
    path = Path(path)
    header = _header(path, POD_REQUIRED + POD_OPTIONAL, POD_REQUIRED)
    names: list[str] = []
    ints: dict[str, list[int]] = {c: [] for c in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli")}
    times: dict[str, list[int]] = {c: [] for c in POD_TIMES}
    texts: dict[str, list[str]] = {c: [] for c in ("gpu_spec", "qos", "pod_phase")}
    for line, row in _read(path, header):
        if not row["name"]:
            raise TraceError(path, line, "name", "empty pod name")
        names.append(row["name"])
        values = {c: _int(path, line, c, row[c]) for c in ints}
        _check_gpu(path, line, values["num_gpu"], values["gpu_milli"])
        for column, value in values.items():
            ints[column].append(value)
        for column in POD_TIMES:
            times[column].append(_int(path, line, column, row.get(column, ""), empty=-1))
        for column, strings in texts.items():
            strings.append(row.get(column, ""))
    return PodTable(
        names=tuple(names),
        cpu_milli=_ints(ints["cpu_milli"]),
        memory_mib=_ints(ints["memory_mib"]),
        num_gpu=_ints(ints["num_gpu"]),
        gpu_milli=_ints(ints["gpu_milli"]),
        gpu_spec=tuple(texts["gpu_spec"]),
        qos=tuple(texts["qos"]),
        pod_phase=tuple(texts["pod_phase"]),
        creation_time=_ints(times["creation_time"]),
        deletion_time=_ints(times["deletion_time"]),
        scheduled_time=_ints(times["scheduled_time"]),
        columns=tuple(header),
    )


def _ints(values: list[int]) -> IntArray:
    return np.array(values, dtype=np.int64)


def _check_gpu(path: Path, line: int, num_gpu: int, gpu_milli: int) -> None:
    if gpu_milli > MILLI:
        raise TraceError(path, line, "gpu_milli", f"{gpu_milli} is out of 0..{MILLI}")
    if num_gpu > 1 and gpu_milli != MILLI:
        raise TraceError(path, line, "gpu_milli", f"a {num_gpu}-GPU pod must take whole GPUs ({MILLI})")
    if num_gpu >= 1 and gpu_milli == 0:
        raise TraceError(path, line, "gpu_milli", "a GPU pod with 0 milli-GPU")
    if num_gpu == 0 and gpu_milli != 0:
        raise TraceError(path, line, "gpu_milli", "milli-GPU on a pod without GPUs")
