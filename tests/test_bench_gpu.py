"""bench/gpu.py in its CPU smoke mode, on tiny corpora that a real Dagster materialize ingested."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.ingest import CORPUS_ASSET_OF
from bench import gpu
from models.family import families
from pipelines.definitions import build_resources
from tests.tiny_corpora import write_all

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STEPS = 2
BENCH_TIMEOUT_S = 300  # the smoke run takes well under a minute; this only stops a hung one


def table_rows(output: str) -> list[dict[str, str]]:
    """The markdown table's rows as {column: cell}."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    header, rows = lines[0], lines[2:]  # lines[1] is the |---| rule

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    return [dict(zip(cells(header), cells(row))) for row in rows]


@pytest.fixture(scope="module")
def tiny_data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-gpu")
    raw, data_root = root / "raw", root / "data"
    write_all(raw)
    run_config = {"ops": {asset.key.to_python_identifier(): {"config": {"source_dir": str(raw / corpus)}}
                          for corpus, asset in CORPUS_ASSET_OF.items()}}
    result = dg.materialize(list(CORPUS_ASSET_OF.values()), resources=build_resources(str(data_root)),
                            run_config=run_config, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return data_root


def test_smoke_mode_reports_one_row_per_family(tiny_data_root):
    names = list(families())
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--device", "cpu", "--steps", str(STEPS), "--profile", "demo",
         "--variants", "fp32", "--families", ",".join(names), "--threads", "1",
         "--data-root", str(tiny_data_root)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("load average")
    rows = table_rows(completed.stdout)
    assert [row["family"] for row in rows] == names
    for row in rows:
        assert row["variant"] == "fp32" and row["steps"] == str(STEPS), row
        assert float(row["items/s"]) > 0 and float(row["ms/step"]) > 0, row
        assert float(row["process max RSS GiB"]) > 0 and row["speed-up vs fp32"] == "1.00", row
        assert row["note"] == "", row


def test_a_spent_budget_stops_each_row_before_its_first_step(tiny_data_root, capsys):
    gpu.main(["--device", "cpu", "--steps", str(STEPS), "--profile", "demo", "--variants", "fp32",
              "--families", "image-gan", "--budget-seconds", "0", "--data-root", str(tiny_data_root)])
    [row] = table_rows(capsys.readouterr().out)
    assert row["steps"] == "0" and row["items/s"] == "n/a"
    assert row["note"].startswith("stopped by its 0 s share of the budget"), row


def test_the_budget_is_shared_over_the_rows_still_to_run():
    budget = gpu.Budget(seconds=90, rows=3)
    shares = [budget.next_row_deadline()[1] for _ in range(3)]
    assert shares[0] == pytest.approx(30, abs=1)
    assert shares[1] == pytest.approx(45, abs=1)  # the first row used none of its share: the rest get it
    assert shares[2] == pytest.approx(90, abs=1)
