"""The benchmark scripts run end to end on small shapes (they import the trainer's step and the reference port, so a
change there must not break them silently)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str, results: Path) -> list[dict]:
    run = subprocess.run([sys.executable, script, *args, "--rounds", "1", "--results", str(results)], cwd=BENCH,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    name = Path(script).stem
    return [json.loads(line) for line in (results / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_step_bench_times_the_port_and_the_engine(tmp_path):
    rows = _run("step.py", "--shapes", "tiny", "--providers", "port", "engine", results=tmp_path)
    assert [r["impl"] for r in rows] == ["port", "engine"]
    assert all(r["ms"] > 0 and r["peak_mb"] > 0 for r in rows)
    stages = rows[1]["extra"]["stages_ms"]
    assert {"backbone", "ASPP", "upsampling", "losses", "optimizer"} <= set(stages)


@pytest.mark.slow
def test_decoder_bench_runs_every_provider(tmp_path):
    rows = _run("decoder.py", "--ops", "decoder", "--classes", "3", "--grids", "4", "--no-memory", results=tmp_path)
    assert [r["impl"] for r in rows] == ["reference", "reference-compiled", "engine-fp32", "engine", "engine-compiled"]
