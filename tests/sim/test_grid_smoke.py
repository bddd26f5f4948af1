"""The CI smoke run of the openb grid: one small trace, two policies, one seed, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import openb_grid

DATA = Path(__file__).resolve().parents[1] / "data" / "openb"


def test_grid_runs_stores_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "openb.jsonl"
    args = ["--trace-dir", str(DATA), "--traces", "multigpu20_head500", "--policies", "bestfit,tessera"]
    args += ["--seeds", "42", "--results", str(results)]
    openb_grid.main(args)
    first = capsys.readouterr()
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["policy"] for r in records) == ["bestfit", "tessera"]
    assert all(r["trace"] == "multigpu20_head500" and 0 < r["final_ratio"] <= 100 for r in records)
    assert "2 runs to do, 0 stored" in first.err and "| multigpu20_head500 |" in first.out
    openb_grid.main(args)  # everything is stored: nothing runs again
    assert "0 runs to do, 2 stored" in capsys.readouterr().err
    assert len(results.read_text().splitlines()) == 2
