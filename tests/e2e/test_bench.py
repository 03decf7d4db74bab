"""The benchmarks still run and report what they claim to (on a few images: their figures are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DEFAULT_MODEL, KAGGLE5, PROJECT

pytestmark = pytest.mark.real_data

GATED_MODEL = DEFAULT_MODEL.parent / "pbc8"  # the shipped model served with four views behind a gate


def run_bench(*args: str) -> dict:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_inference_benchmark_measures_a_gated_model_as_served_with_every_view_and_with_one():
    served = json.loads((GATED_MODEL / "metadata.json").read_text())["calibration"]
    assert served["view_gate"] is not None and len(served["views"]) > 1  # what this test is about
    report = run_bench("bench/bench_inference.py", "--images", "16", "--model-dir", "models/pbc8", "--runtimes", "keras")
    rows = [(r["test_time_views"], r["view_gate"], r["share_of_images_given_every_view"]) for r in report["results"]]
    assert [row[:2] for row in rows] == [(4, served["view_gate"]), (4, None), (1, None)]
    assert 0 <= rows[0][2] <= 1 and rows[1][2] == 1.0 and rows[2][2] is None
    assert all(r["pipeline_images_per_s"] > 0 and r["weights"] == "models/pbc8" for r in report["results"])
    assert {r["runtime"] for r in report["results"]} == {"keras"}
    assert report["default_model_meets_targets"] is None  # models/default was not among those measured


@pytest.mark.slow
def test_backend_benchmark_compares_answers_across_runs(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((KAGGLE5 / "monocyte").iterdir())[:4]:
        (images / path.name).symlink_to(path)
    expected = tmp_path / "expected.json"
    first = run_bench("bench/bench_backend.py", str(GATED_MODEL), str(images), "--repeat", "2", "--write-expected", str(expected))
    served = json.loads((GATED_MODEL / "metadata.json").read_text())["calibration"]
    assert first["images"] == 4 and first["view_gate"] == served["view_gate"]
    assert first["test_time_views"] == len(served["views"])
    again = run_bench("bench/bench_backend.py", str(GATED_MODEL), str(images), "--repeat", "2", "--expected", str(expected))
    assert again["same_class"] == "4/4" and again["max_probability_difference"] < 1e-5


@pytest.mark.slow
def test_fields_benchmark_scores_the_found_cells_through_the_queue_and_in_process():
    report = run_bench("bench/bench_fields.py", "--fields", "6", "--shipped-only")
    (model,) = report["models"]
    assert report["fields"] == 6 and model["stage"] == "as shipped"
    assert model["queue_and_in_process_boxes_equal"] is True
    assert model["queue_type_accuracy"] == model["in_process_type_accuracy"]
    assert 0 < model["recall"] <= 1 and model["queue_fields_per_s"] > 0 and model["in_process_fields_per_s"] > 0


@pytest.mark.slow
def test_console_benchmark_renders_the_sample_page():
    report = run_bench("bench/bench_console.py", "--cells", "12", "--requests", "3")
    assert report["cells"] == 12 and report["sample_page_ms_p50"] > 0 and report["thumbnail_revalidated_status"] == 304


@pytest.mark.slow
def test_scale_benchmark_fills_each_size_and_times_every_operation(tmp_path: Path):
    plot = tmp_path / "scale.png"
    report = run_bench("bench/bench_scale.py", "--sizes", "3000,6000", "--repeat", "1", "--plot", str(plot))
    small, large = report["results"]
    assert (small["predictions"], large["predictions"]) == (3000, 6000)
    assert large["rows"]["predictions"] == large["rows"]["sample_images"] == large["rows"]["images"] == 6000
    assert large["rows"]["cell_reviews"] > 0 and large["rows"]["audit_log"] > large["rows"]["samples"]
    operations = {"scrape", "worklist", "worklist_refresh", "review_queue", "report", "sample_page", "relabel", "sign_off"}
    operations |= {"audit_page", "audit_subject", "sweep", "submission"}
    assert set(small["ms"]) == set(large["ms"]) == operations and all(ms > 0 for ms in large["ms"].values())
    assert large["migration_0010_s"] > 0 and plot.stat().st_size > 0
    # the plans come with the largest size only; the scrape reads the running totals, not the cells
    assert "plan" not in small["queries"]["scrape_cells"]
    assert not any("sample_images" in line for line in large["queries"]["scrape_cells"]["plan"])
    assert all(query["ms"] >= 0 and query["plan"] for query in large["queries"].values())  # (tiny tables: any plan will do)
    assert set(report["verdict"]["largest_over_smallest"]) == operations


@pytest.mark.slow
def test_scaleout_benchmark_measures_throughput_and_the_share_outside_the_model():
    report = run_bench(
        "bench/bench_scaleout.py", "--workers", "1", "--samples", "1", "--images-per-sample", "4", "--submit-seconds", "1"
    )
    (run,) = report["results"]
    assert run["workers"] == 1 and run["images"] == 4 and run["images_per_s"] > 0
    assert 0 < run["model_share"] <= 1 and run["outside_model_share"] == pytest.approx(1 - run["model_share"], abs=0.002)
    assert run["api"]["1_client"]["samples_per_s"] > 0 and run["api"]["4_clients"]["images_per_s"] > 0
