"""``tessera sim openb``: the paper's replay from the command line, on a slice of a real trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli.main import app

TRACES = Path(__file__).resolve().parents[1] / "data" / "openb"  # excerpts of the real trace


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    """The first 40 nodes and 400 pods of the real default trace (both with their headers)."""
    nodes, pods = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    nodes.write_text("".join((TRACES / "openb_node_list_gpu_node.csv").read_text().splitlines(True)[:41]))
    pods.write_text(
        "".join((TRACES / "openb_pod_list_default_head2000.csv").read_text().splitlines(True)[:401])
    )
    return nodes, pods


def sim(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["sim", "openb", *args])
    return result.exit_code, result.output


def test_json_has_the_final_ratio_and_the_curve(small: tuple[Path, Path]) -> None:
    nodes, pods = small
    code, output = sim("--pods", str(pods), "--nodes", str(nodes), "--policy", "bestfit", "-o", "json")
    assert code == 0, output
    doc = json.loads(output)
    assert doc["policy"] == "bestfit" and doc["seed"] == 42
    assert 50 < doc["final_alloc_ratio"] <= 100
    assert (
        doc["curve"][-1]["arrived_pct"] == 130 and doc["curve"][-1]["alloc_ratio"] == doc["final_alloc_ratio"]
    )
    again = json.loads(
        sim("--pods", str(pods), "--nodes", str(nodes), "--policy", "bestfit", "-o", "json")[1]
    )
    assert again["final_alloc_ratio"] == doc["final_alloc_ratio"]  # seeded: the same run twice


def test_default_policy_is_tessera_and_table_output(small: tuple[Path, Path]) -> None:
    nodes, pods = small
    code, output = sim("--pods", str(pods), "--nodes", str(nodes))
    assert code == 0, output
    assert "policy tessera, seed 42: final allocation ratio" in output and "ARRIVED %" in output


def test_departures_report_wait_and_jct(small: tuple[Path, Path]) -> None:
    nodes, pods = small
    code, output = sim("--pods", str(pods), "--nodes", str(nodes), "--departures", "-o", "json")
    assert code == 0, output
    doc = json.loads(output)
    assert doc["pods"] == 400 and {"wait_p50", "wait_p99", "jct_mean"} <= doc.keys()


def test_bad_traces_name_file_line_and_column(small: tuple[Path, Path], tmp_path: Path) -> None:
    nodes, _ = small
    bad = tmp_path / "bad.csv"
    bad.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np1,1000,abc,1,500\n")
    code, output = sim("--pods", str(bad), "--nodes", str(nodes))
    assert code == 1 and f"{bad}:2, column 'memory_mib': not an integer" in output
    code, output = sim("--pods", str(bad), "--nodes", str(nodes), "--policy", "tetris")
    assert code == 2 and "unknown policy 'tetris'" in output


def test_departures_with_faster_arrivals_queue(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("".join((TRACES / "openb_node_list_gpu_node.csv").read_text().splitlines(True)[:21]))
    pods = str(TRACES / "openb_pod_list_default_head2000.csv")
    base = ["--pods", pods, "--nodes", str(nodes), "--departures", "-o", "json"]
    calm = json.loads(sim(*base)[1])
    code, output = sim(*base, "--speedup", "10")
    assert code == 0, output
    busy = json.loads(output)
    assert calm["wait_p99"] == 0 and busy["speedup"] == 10
    assert busy["waited"] > 100 and busy["wait_p99"] > 0 and busy["jct_mean"] > calm["jct_mean"]
    assert sim(*base, "--speedup", "0")[0] == 2
