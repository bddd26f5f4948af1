"""Placement quality on Alibaba's openb traces, the FGD paper's method: traces x policies x seeds.

Each (trace, policy, seed) run replays the pod list on the 1,213-node GPU cluster in the paper's
order (sort by name, seeded shuffle, tuned to 130% of cluster milli-GPU; see ``tessera.sim.method``)
and records the GPU allocation ratio at 130% arrived demand. Finished runs are appended as JSON
lines to the results file, so an interrupted grid resumes where it stopped (runs already stored are
skipped). Then two markdown tables: the mean over seeds per trace x policy next to the published
FGD-paper means (``../shared/benchmarks/ANCHORS.md`` section 1) with the difference, and the seconds
per run per policy.

Ties between equally scored nodes go by default to the lowest rank in a seeded permutation of the
nodes (``--tie-order shuffled``): the paper's Go simulator breaks ties by the lowest node name, but
it first prefixes every node name with its index in a seeded random permutation, so "lowest name"
is a random (per seed) but fixed order. ``--tie-order name`` uses the plain node-name order.

Run: ``.venv/bin/python -m bench.openb_grid --jobs 2`` (all traces found, all policies, seeds
42-51), or e.g. ``--traces default,gpushare40 --policies fgd,tessera --seeds 42-44``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from tessera.scheduler.policies import POLICIES
from tessera.sim import NodeTable, PodTable, read_nodes, read_pods, run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE_DIR = Path(os.environ.get("TESSERA_OPENB_DIR", REPO.parent / "shared" / "traces" / "openb"))
DEFAULT_RESULTS = REPO / "bench" / "results" / "openb.jsonl"
NODE_FILE = "openb_node_list_gpu_node.csv"
POD_PREFIX = "openb_pod_list_"

# GPU allocation ratio (%) at 130% arrived demand, mean of seeds 42-51, from the paper's published
# experiments/analysis/expected_results/analysis_allo_discrete.csv (as quoted in ANCHORS.md).
PUBLISHED_COLUMNS = ("random", "dotprod", "clustering", "packing", "bestfit", "fgd")
PUBLISHED: dict[str, tuple[float, ...]] = {
    "cpu050": (91.24, 93.27, 93.79, 93.72, 93.79, 95.21),
    "cpu100": (89.11, 91.95, 92.64, 92.72, 93.44, 95.35),
    "cpu200": (83.77, 87.70, 89.92, 90.22, 92.40, 95.05),
    "cpu250": (80.42, 83.81, 87.99, 88.28, 91.45, 93.41),
    "default": (87.47, 90.85, 91.88, 92.00, 93.08, 95.39),
    "gpushare100": (79.44, 82.42, 82.65, 82.57, 85.01, 86.90),
    "gpushare40": (86.00, 89.56, 90.02, 90.03, 91.69, 94.15),
    "gpushare60": (83.65, 87.11, 87.20, 87.45, 89.36, 91.40),
    "gpushare80": (81.22, 84.49, 84.85, 85.00, 87.01, 89.30),
    "gpuspec10": (87.43, 90.39, 92.18, 92.46, 93.30, 94.95),
    "gpuspec20": (87.24, 89.97, 92.25, 92.94, 93.30, 94.84),
    "gpuspec25": (86.94, 89.63, 92.08, 92.98, 93.23, 94.74),
    "gpuspec33": (86.46, 89.14, 92.12, 93.22, 93.09, 94.55),
    "multigpu20": (88.69, 92.06, 93.56, 93.71, 93.93, 95.65),
    "multigpu30": (89.27, 93.28, 94.72, 94.87, 94.72, 96.46),
    "multigpu40": (90.09, 94.19, 95.50, 95.74, 95.23, 96.99),
    "multigpu50": (90.27, 94.85, 95.81, 96.18, 95.74, 97.18),
}

Key = tuple[str, str, int, str]
_tables: dict[str, tuple[NodeTable, PodTable]] = {}


def published(trace: str, policy: str) -> float | None:
    row = PUBLISHED.get(trace)
    if row is None or policy not in PUBLISHED_COLUMNS:
        return None
    return row[PUBLISHED_COLUMNS.index(policy)]


def available_traces(trace_dir: Path) -> list[str]:
    return sorted(p.stem[len(POD_PREFIX) :] for p in trace_dir.glob(f"{POD_PREFIX}*.csv"))


def parse_seeds(text: str) -> list[int]:
    """``"42-51"`` or ``"42,43,50"`` (or a mix)."""
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def load(results: Path) -> dict[Key, dict[str, Any]]:
    done: dict[Key, dict[str, Any]] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[(rec["trace"], rec["policy"], rec["seed"], rec["tie_order"])] = rec
    return done


def one_run(job: tuple[str, str, str, int, str]) -> dict[str, Any]:
    trace_dir, trace, policy_name, seed, tie_order = job
    if trace not in _tables:
        _tables[trace] = (
            read_nodes(Path(trace_dir) / NODE_FILE),
            read_pods(Path(trace_dir) / f"{POD_PREFIX}{trace}.csv"),
        )
    nodes, pods = _tables[trace]
    result = run(nodes, pods, policy_name, seed, tie_order=tie_order)
    return {
        "trace": trace,
        "policy": policy_name,
        "seed": seed,
        "tie_order": tie_order,
        "final_ratio": result.final_ratio,
        "end_ratio": round(result.end_ratio, 4),
        "pods": result.pods,
        "failed": result.failed_pods,
        "seconds": round(result.seconds, 3),
        "curve": sorted(result.curve().items()),
    }


def run_grid(jobs: list[tuple[str, str, str, int, str]], results: Path, workers: int) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with results.open("a") as out:

        def store(rec: dict[str, Any], n: int) -> None:
            out.write(json.dumps(rec) + "\n")
            out.flush()
            elapsed = time.perf_counter() - started
            print(
                f"[{n}/{len(jobs)} {elapsed:6.0f}s] {rec['trace']} {rec['policy']} seed {rec['seed']}: "
                f"{rec['final_ratio']:.2f}% ({rec['seconds']:.1f}s)",
                file=sys.stderr,
            )

        if workers <= 1:
            for n, job in enumerate(jobs, 1):
                store(one_run(job), n)
        else:
            with Pool(workers) as pool:
                for n, rec in enumerate(pool.imap_unordered(one_run, jobs), 1):
                    store(rec, n)


def tables(
    done: dict[Key, dict[str, Any]], traces: list[str], policies: list[str], seeds: list[int], tie_order: str
) -> str:
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    for trace in traces:
        for name in policies:
            for seed in seeds:
                rec = done.get((trace, name, seed, tie_order))
                if rec is not None:
                    values[(trace, name)].append(rec["final_ratio"])
                    seconds[name].append(rec["seconds"])
    lines = [
        f"GPU allocation ratio (%) at 130% arrived demand, mean over seeds {_seed_text(seeds)} "
        f"(tie order: {tie_order}); cells: ours (published, ours - published)",
        "",
        "| trace | " + " | ".join(policies) + " |",
        "|---|" + "---|" * len(policies),
    ]
    for trace in traces:
        cells = []
        for name in policies:
            vals = values.get((trace, name), [])
            if not vals:
                cells.append("-")
                continue
            mean = statistics.fmean(vals)
            cell = f"{mean:.2f}" + ("" if len(vals) == len(seeds) else f" [{len(vals)} seeds]")
            ref = published(trace, name)
            if ref is not None:
                cell += f" ({ref:.2f}, {mean - ref:+.2f})"
            cells.append(cell)
        lines.append(f"| {trace} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Seconds per (trace, policy, seed) run",
        "",
        "| policy | mean | max | runs |",
        "|---|---|---|---|",
    ]
    for name in policies:
        secs = seconds.get(name, [])
        if secs:
            lines.append(f"| {name} | {statistics.fmean(secs):.2f} | {max(secs):.2f} | {len(secs)} |")
    return "\n".join(lines)


def _seed_text(seeds: Iterable[int]) -> str:
    s = sorted(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ",".join(map(str, s))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", help="comma-separated (default: every pod list in --trace-dir)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    parser.add_argument("--seeds", default="42-51", help='e.g. "42-51" or "42,43"')
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON-lines results file")
    parser.add_argument("--trace-dir", type=Path, default=DEFAULT_TRACE_DIR)
    parser.add_argument("--tie-order", choices=("shuffled", "name"), default="shuffled")
    parser.add_argument("--report-only", action="store_true", help="print the tables, run nothing")
    args = parser.parse_args(argv)

    traces = args.traces.split(",") if args.traces else available_traces(args.trace_dir)
    policies = args.policies.split(",")
    for name in policies:
        if name not in POLICIES:
            parser.error(f"unknown policy {name!r}; valid: {', '.join(POLICIES)}")
    seeds = parse_seeds(args.seeds)
    done = load(args.results)
    if not args.report_only:
        for trace in traces:
            if not (args.trace_dir / f"{POD_PREFIX}{trace}.csv").exists():
                parser.error(f"no pod list for trace {trace!r} in {args.trace_dir}")
        todo = [
            (str(args.trace_dir), trace, name, seed, args.tie_order)
            for trace in traces
            for name in policies
            for seed in seeds
            if (trace, name, seed, args.tie_order) not in done
        ]
        print(
            f"{len(todo)} runs to do, {len(traces) * len(policies) * len(seeds) - len(todo)} stored",
            file=sys.stderr,
        )
        run_grid(todo, args.results, args.jobs)
        done = load(args.results)
    print(tables(done, traces, policies, seeds, args.tie_order))


if __name__ == "__main__":
    main()
