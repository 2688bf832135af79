import csv
import json
import math
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from resp_hf.linear_probe.results import (
    BASELINE_COLOR,
    MODEL_COLOR,
    aggregate,
    format_mean_std,
    load_baselines,
    representative_summary,
    write_results,
)

SHARED_BASELINES = Path(__file__).resolve().parents[1].parent / "shared" / "opera" / "baselines.csv"
MODELS = ["openSMILE", "VGGish", "AudioMAE", "CLAP", "OPERA-CT", "OPERA-CE", "OPERA-GT"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(task, layer, seed, value, metric="AUROC", task_name=None, best_epoch=3):
    return {
        "task": task,
        "task_name": task_name or f"{task.lower()}_name",
        "metric": metric,
        "layer": layer,
        "final_layer": str(layer) == "11",  # a 12-block encoder's final layer in the original M2D numbering
        "seed": seed,
        "value": value,
        "best_epoch": best_epoch,
        "n_train": 100,
        "n_validation": 20,
        "n_test": 40,
    }


def shared_baselines():
    """`{(task, model): (metric, mean, std)}` parsed from the shared `.550±.015` table (independently of resp_hf)."""
    with SHARED_BASELINES.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    table = {}
    for row in rows:
        for column, cell in row.items():
            if column in ("task", "metric"):
                continue
            model = "openSMILE" if column == "Opensmile" else column
            mean, std = cell.split("±")
            table[(row["task"], model)] = (row["metric"], float(mean), float(std))
    return table


def table_rows(markdown):
    """The Markdown table as lists of stripped cells, header first, without the alignment line."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if "---" not in line]


def row_by_label(rows, label):
    matches = [row for row in rows if row[0] == label]
    assert len(matches) == 1, f"expected exactly one row {label!r}, got {len(matches)}"
    return dict(zip(rows[0], matches[0]))


def test_package_baselines_equal_the_shared_opera_table():
    expected = shared_baselines()
    baselines = load_baselines()
    assert len(baselines) == 133 == len(expected)
    got = {(row["task"], row["model"]): (row["metric"], row["mean"], row["std"]) for row in baselines}
    assert got == expected
    assert {row["model"] for row in baselines} == set(MODELS)
    assert {row["task"] for row in baselines} == {f"T{number}" for number in range(1, 20)}
    assert all(isinstance(row["mean"], float) and isinstance(row["std"], float) for row in baselines)
    assert {row["source"] for row in baselines} == {baselines[0]["source"]}
    for fact in ("calculate_rank.py", "3622310", "pre-camera-ready", "NeurIPS 2024"):
        assert fact in baselines[0]["source"]
    assert got[("T19", "OPERA-GT")] == ("MAE", 2.416, 0.885)
    assert got[("T6", "OPERA-GT")] == ("AUROC", 0.735, 0.0)


def test_aggregate_uses_only_the_seeds_present():
    records = [
        record("T10", "11", 2, 0.9),
        record("T10", "11", 0, 0.7),
        record("T10", "11", 1, 0.8),
        record("T7", "11", 0, 0.8),
        record("T7", "11", 1, 0.9),
        record("T7", "6", 4, 0.6),
    ]
    summaries = aggregate(records)
    assert [(s["task"], s["layer"]) for s in summaries] == [("T7", "6"), ("T7", "11"), ("T10", "11")]
    one_seed, two_seeds, three_seeds = summaries
    assert two_seeds["n_seeds"] == 2 and two_seeds["seeds"] == [0, 1]
    assert two_seeds["mean"] == pytest.approx(0.85) and two_seeds["std"] == pytest.approx(0.05)
    assert one_seed == {
        "task": "T7",
        "task_name": "t7_name",
        "metric": "AUROC",
        "layer": "6",
        "final_layer": False,
        "mean": pytest.approx(0.6),
        "std": 0.0,
        "spread": "seeds",
        "n_seeds": 1,
        "seeds": [4],
    }
    assert three_seeds["seeds"] == [0, 1, 2]
    assert three_seeds["mean"] == pytest.approx(0.8)
    assert three_seeds["std"] == pytest.approx(0.1 * math.sqrt(2 / 3))  # population std, ddof=0


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"task": "T7"}], "lacks the key"),
        ([record("T7", "11", 0, 0.8, metric="F1")], "Unknown metric 'F1'"),
        ([record("T7", "11", 0, float("nan"))], "non-finite"),
        ([record("T7", "11", 0, 0.8), record("T7", "11", 0, 0.9)], "more than one record"),
        ([record("T7", "11", 0, 0.8), record("T7", "6", 0, 0.5, metric="MAE")], "different \\(task_name, metric\\)"),
    ],
)
def test_aggregate_rejects_malformed_records(records, message):
    with pytest.raises(ValueError, match=message):
        aggregate(records)


def test_format_mean_std_uses_three_decimals():
    assert format_mean_std(0.85349, 0.0121) == "0.853 ± 0.012"
    assert format_mean_std(2.0, 0.0) == "2.000 ± 0.000"


def test_results_csv_lists_every_run_then_mean_and_std_rows(tmp_path):
    records = [
        record("T7", "11", 1, 0.9, task_name="icbhi_copd", best_epoch=None),
        record("T7", "11", 0, 0.8, task_name="icbhi_copd", best_epoch=7),
        record("T7", 6, 0, 0.5, task_name="icbhi_copd"),
    ]
    paths = write_results(records, tmp_path / "out", "resp-m2d")
    with paths["csv"].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "task",
        "task_name",
        "metric",
        "layer",
        "final_layer",
        "seed",
        "value",
        "best_epoch",
        "n_train",
        "n_validation",
        "n_test",
        "mape",
        "fold_std",
    ]
    assert [(row["layer"], row["seed"]) for row in rows] == [
        ("6", "0"),
        ("11", "0"),
        ("11", "1"),
        ("6", "mean"),
        ("6", "std"),
        ("11", "mean"),
        ("11", "std"),
    ]
    assert rows[1] == {
        "task": "T7",
        "task_name": "icbhi_copd",
        "metric": "AUROC",
        "layer": "11",
        "final_layer": "True",
        "seed": "0",
        "value": "0.8",
        "best_epoch": "7",
        "n_train": "100",
        "n_validation": "20",
        "n_test": "40",
        "mape": "",
        "fold_std": "",
    }
    assert rows[2]["best_epoch"] == ""
    assert float(rows[5]["value"]) == pytest.approx(0.85) and float(rows[6]["value"]) == pytest.approx(0.05)
    assert float(rows[3]["value"]) == pytest.approx(0.5) and float(rows[4]["value"]) == 0.0
    assert all(row["task"] == "T7" and row["metric"] == "AUROC" for row in rows)
    assert all(row["best_epoch"] == row["n_train"] == "" for row in rows[3:])


def test_results_md_compares_layers_with_baselines_and_bolds_the_best(tmp_path):
    records = [record("T7", "11", seed, value, task_name="icbhi_copd") for seed, value in enumerate([0.94, 0.96])]
    records += [record("T10", "11", seed, value, task_name="kauh") for seed, value in enumerate([0.6, 0.7])]
    records += [record("T7", "6", seed, value, task_name="icbhi_copd") for seed, value in enumerate([0.7, 0.8])]
    markdown = write_results(records, tmp_path, "resp-m2d")["markdown"].read_text(encoding="utf-8")
    rows = table_rows(markdown)
    assert rows[0] == ["Model", "T7<br>AUROC ↑", "T10<br>AUROC ↑", "Avg. AUROC ↑"]
    assert [row[0] for row in rows[1:]] == ["resp-m2d", "resp-m2d (layer 6)", *MODELS]
    assert row_by_label(rows, "resp-m2d") == {
        "Model": "resp-m2d",
        "T7<br>AUROC ↑": "**0.950 ± 0.010**",
        "T10<br>AUROC ↑": "0.650 ± 0.050",
        "Avg. AUROC ↑": "0.800",
    }
    layer_six = row_by_label(rows, "resp-m2d (layer 6)")
    assert layer_six["T7<br>AUROC ↑"] == "0.750 ± 0.050"
    assert layer_six["T10<br>AUROC ↑"] == "–" and layer_six["Avg. AUROC ↑"] == "–"
    clap = row_by_label(rows, "CLAP")
    assert clap["T7<br>AUROC ↑"] == "0.933 ± 0.005" and clap["Avg. AUROC ↑"] == f"{(0.933 + 0.697) / 2:.3f}"
    assert row_by_label(rows, "OPERA-CE")["T10<br>AUROC ↑"] == "**0.741 ± 0.014**"
    assert markdown.count("**") == 4
    sources = [line for line in markdown.splitlines() if line.startswith("Sources:")]
    assert len(sources) == 1 and "3622310" in sources[0] and "pre-camera-ready" in sources[0]
    assert "T7 = icbhi_copd" in markdown and "T10 = kauh" in markdown


def test_results_md_averages_need_every_task_of_the_metric(tmp_path):
    records = [record("T7", "11", 0, 0.5), record("X1", "11", 0, 0.9, task_name="my_dataset")]
    markdown = write_results(records, tmp_path, "mine")["markdown"].read_text(encoding="utf-8")
    rows = table_rows(markdown)
    assert rows[0] == ["Model", "T7<br>AUROC ↑", "X1<br>AUROC ↑", "Avg. AUROC ↑"]
    assert row_by_label(rows, "mine") == {
        "Model": "mine",
        "T7<br>AUROC ↑": "0.500 ± 0.000",
        "X1<br>AUROC ↑": "**0.900 ± 0.000**",
        "Avg. AUROC ↑": "0.700",
    }
    for model in MODELS:
        assert row_by_label(rows, model)["X1<br>AUROC ↑"] == "–"
        assert row_by_label(rows, model)["Avg. AUROC ↑"] == "–"
    assert row_by_label(rows, "CLAP")["T7<br>AUROC ↑"] == "**0.933 ± 0.005**"


def test_results_md_with_an_mae_task_bolds_the_lowest(tmp_path):
    records = [record("T19", "11", seed, value, metric="MAE", task_name="nosemic_rr") for seed, value in [(0, 3.0)]]
    records += [record("T12", "11", 0, 0.7)]
    markdown = write_results(records, tmp_path, "resp-m2d")["markdown"].read_text(encoding="utf-8")
    rows = table_rows(markdown)
    assert rows[0] == ["Model", "T12<br>AUROC ↑", "T19<br>MAE ↓", "Avg. AUROC ↑", "Avg. MAE ↓"]
    assert row_by_label(rows, "resp-m2d")["T19<br>MAE ↓"] == "3.000 ± 0.000"
    assert row_by_label(rows, "resp-m2d")["Avg. MAE ↓"] == "3.000"
    assert row_by_label(rows, "OPERA-GT")["T19<br>MAE ↓"] == "**2.416 ± 0.885**"
    assert row_by_label(rows, "OPERA-GT")["Avg. MAE ↓"] == "2.416"
    assert row_by_label(rows, "OPERA-CT")["T12<br>AUROC ↑"] == "**0.781 ± 0.000**"

    better = [record("T19", "11", 0, 2.0, metric="MAE", task_name="nosemic_rr")]
    markdown = write_results(better, tmp_path / "better", "resp-m2d")["markdown"].read_text(encoding="utf-8")
    rows = table_rows(markdown)
    assert rows[0] == ["Model", "T19<br>MAE ↓", "Avg. MAE ↓"]
    assert row_by_label(rows, "resp-m2d")["T19<br>MAE ↓"] == "**2.000 ± 0.000**"
    assert row_by_label(rows, "OPERA-GT")["T19<br>MAE ↓"] == "2.416 ± 0.885"


def test_results_json_holds_the_summaries_and_the_source(tmp_path):
    records = [
        record("T19", "11", 0, 2.0, metric="MAE", task_name="nosemic_rr"),
        record("T19", "11", 1, 3.0, metric="MAE", task_name="nosemic_rr"),
        record("T7", "3", 0, 0.75, task_name="icbhi_copd"),
    ]
    report = json.loads(write_results(records, tmp_path, "resp-m2d")["json"].read_text(encoding="utf-8"))
    assert report["model_name"] == "resp-m2d"
    assert report["results"] == [
        {
            "task": "T7",
            "task_name": "icbhi_copd",
            "metric": "AUROC",
            "layer": "3",
            "final_layer": False,
            "mean": 0.75,
            "std": 0.0,
            "spread": "seeds",
            "n_seeds": 1,
            "seeds": [0],
        },
        {
            "task": "T19",
            "task_name": "nosemic_rr",
            "metric": "MAE",
            "layer": "11",
            "final_layer": True,
            "mean": 2.5,
            "std": 0.5,
            "spread": "seeds",
            "n_seeds": 2,
            "seeds": [0, 1],
        },
    ]
    assert report["baselines_source"] == load_baselines()[0]["source"]


def test_results_json_has_no_source_without_opera_tasks(tmp_path):
    report = json.loads(write_results([record("X1", "11", 0, 0.5)], tmp_path, "m")["json"].read_text("utf-8"))
    assert report["baselines_source"] is None


def assert_valid_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (480, 840)  # 7 x 4 inches at 120 dpi
    assert image.std() > 0.05, f"{path} looks blank"


def color_fraction(path, color):
    """Share of the image's pixels within a small tolerance of `color`."""
    pixels = matplotlib.image.imread(path)[..., :3]
    return float(np.mean(np.all(np.abs(pixels - matplotlib.colors.to_rgb(color)) < 0.02, axis=-1)))


def test_the_bar_chart_highlights_the_evaluated_model(tmp_path):
    assert matplotlib.colors.to_rgb(MODEL_COLOR) != matplotlib.colors.to_rgb(BASELINE_COLOR)
    path = write_results([record("T7", "11", 0, 0.85)], tmp_path, "resp-m2d")["plots"]["T7"]
    highlighted, baselines = color_fraction(path, MODEL_COLOR), color_fraction(path, BASELINE_COLOR)
    assert highlighted > 0.02, "the evaluated model's bar is missing its highlight color"
    assert baselines > 4 * highlighted, "the seven baseline bars should share the other color"


def test_plots_are_png_bar_charts_and_layer_curves(tmp_path):
    records = [record("T7", layer, seed, 0.8 + 0.01 * seed) for layer in ("11", "3", "6") for seed in range(3)]
    records += [record("T19", "11", seed, 2.0 + seed, metric="MAE") for seed in range(2)]
    paths = write_results(records, tmp_path, "resp-m2d")
    assert paths["plots"] == {"T7": tmp_path / "plots" / "T7.png", "T19": tmp_path / "plots" / "T19.png"}
    assert paths["layer_plots"] == {"T7": tmp_path / "plots" / "T7_layers.png"}
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == ["T19.png", "T7.png", "T7_layers.png"]
    for path in [*paths["plots"].values(), *paths["layer_plots"].values()]:
        assert_valid_png(path)


def test_plots_work_for_a_task_without_baselines(tmp_path):
    paths = write_results([record("X1", "2", 0, 0.6), record("X1", "4", 0, 0.7)], tmp_path, "m")
    assert_valid_png(paths["plots"]["X1"])
    assert_valid_png(paths["layer_plots"]["X1"])


def test_the_bar_chart_shows_the_last_layer_else_the_best_one():
    summaries = aggregate([record("T7", layer, 0, value) for layer, value in [("3", 0.9), ("11", 0.6), ("6", 0.7)]])
    assert representative_summary(summaries)["layer"] == "11"
    assert representative_summary([s for s in summaries if s["layer"] != "11"])["layer"] == "3"
    mae = aggregate([record("T19", layer, 0, value, metric="MAE") for layer, value in [("3", 2.5), ("6", 2.1)]])
    assert representative_summary(mae)["layer"] == "6"


def test_write_results_refuses_empty_records_and_metric_mismatches(tmp_path):
    with pytest.raises(ValueError, match="No records"):
        write_results([], tmp_path, "m")
    with pytest.raises(ValueError, match="scored with MAE here but with AUROC"):
        write_results([record("T7", "11", 0, 0.5, metric="MAE")], tmp_path, "m")


def test_results_json_writes_an_undefined_mape_as_null(tmp_path):
    records = [
        {**record("T19", "11", seed, 2.0 + seed, metric="MAE", task_name="nosemic_rr"), "mape": mape}
        for seed, mape in [(0, 0.1), (1, float("nan"))]
    ]
    text = write_results(records, tmp_path, "resp-m2d")["json"].read_text(encoding="utf-8")

    def reject(constant):
        raise ValueError(f"results.json holds {constant}, which is not JSON")

    result = json.loads(text, parse_constant=reject)["results"][0]
    assert result["mean"] == 2.5 and result["mape_mean"] is None and result["mape_std"] is None


def test_results_say_what_the_baselines_std_is_over_and_list_the_notes(tmp_path):
    records = [record("T7", "11", 0, 0.8, task_name="icbhi_copd")]
    records += [record("T19", "11", 0, 2.0, metric="MAE", task_name="nosemic_rr")]
    note = "T7: left out 3 of 828 recordings, missing or unreadable (train 2, test 1)."
    paths = write_results(records, tmp_path, "resp-m2d", notes=[note])
    markdown = paths["markdown"].read_text(encoding="utf-8")
    sources = next(line for line in markdown.splitlines() if line.startswith("Sources:"))
    assert "Baselines: AUROC mean ± std over 5 seeds; MAE mean ± std over the leave-one-subject-out folds" in sources
    assert markdown.endswith(f"Notes:\n- {note}\n")
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["notes"] == [note]
    only_auroc = write_results(records[:1], tmp_path / "auroc", "resp-m2d")
    text = only_auroc["markdown"].read_text(encoding="utf-8")
    assert "Baselines: AUROC mean ± std over 5 seeds, OPERA" in text and "folds" not in text and "Notes" not in text
    assert json.loads(only_auroc["json"].read_text(encoding="utf-8"))["notes"] == []


def test_a_single_leave_one_subject_out_run_reports_the_std_over_its_folds():
    single = aggregate([{**record("T19", "11", 0, 2.0, metric="MAE"), "fold_std": 0.7}])[0]
    assert (single["std"], single["spread"]) == (0.7, "folds")  # as OPERA: np.std(maes) over the subjects
    runs = [{**record("T19", "11", seed, value, metric="MAE"), "fold_std": 0.7} for seed, value in [(0, 2.0), (1, 3.0)]]
    several = aggregate(runs)[0]
    assert (several["std"], several["spread"]) == (0.5, "seeds")


def test_records_with_the_old_layer_names_are_refused():
    old = {**record("T7", "last", 0, 0.8), "final_layer": True}
    with pytest.raises(ValueError, match="layers are original M2D numbers .*rerun `resp-hf benchmark`"):
        aggregate([old])
