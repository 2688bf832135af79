import csv
import json

import numpy as np
import pytest
import torch
from conftest import OPERA

from resp_hf.cards import encoder_card, write_card
from resp_hf.cli import main as cli_main
from resp_hf.models.resp_m2d import RespM2DConfig
from resp_hf.tasks import finetune_benchmark
from resp_hf.tasks.finetune_benchmark import (
    FINETUNE_RECIPES,
    LINEAR_RECIPE,
    class_weights,
    learning_rate_factor,
    make_model,
    write_task_results,
)

ICBHI = OPERA / "datasets" / "icbhi"
TEST_RECORDINGS = {
    "101_1b1_Pr_sc_Meditron",
    "104_1b1_Al_sc_Litt3200",
    "104_1b1_Ll_sc_Litt3200",
    "104_1b1_Lr_sc_Litt3200",
}


def write_split(folder, is_test):
    """The shared recordings split by recording, as the official file does (its own split has one train patient)."""
    names = [line.split("\t")[0] for line in (ICBHI / "ICBHI_challenge_train_test.txt").read_text().split("\n") if line]
    path = folder / "split.txt"
    path.write_text("".join(f"{name}\t{'test' if is_test(name) else 'train'}\n" for name in names))
    return path


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("split"), lambda name: name in TEST_RECORDINGS)


VALIDATION_104 = ("--validation-fraction", "0.05", "--validation-seed", "2")


def benchmark_args(encoder_folder, split_file, output, *extra):
    return [
        "tasks", "benchmark", "--model", str(encoder_folder), "--icbhi-root", str(ICBHI), "--split-file",
        str(split_file), "--output", str(output), "--epochs", "2", "--batch-size", "8", "--seconds", "2", *extra,
    ]  # fmt: skip


def test_benchmark_end_to_end_on_the_tiny_model(encoder_folder, split_file, tmp_path):
    output = tmp_path / "bench"
    # Validation: patient 104 (seed 2), so train (103's wheezes), validation and test all hold two classes.
    args = benchmark_args(encoder_folder, split_file, output, "--seeds", "0,1", *VALIDATION_104)
    assert cli_main(args) == 0
    rows = [row for row in csv.DictReader((output / "results.csv").open()) if row["seed"] in ("0", "1")]
    runs = [("finetune", "0"), ("finetune", "1"), ("linear", "0"), ("linear", "1")]
    for metric in ("Score", "Sp", "Se"):
        assert [
            (r["protocol"], r["seed"]) for r in rows if r["metric"] == metric and r["task"] == "icbhi-4class"
        ] == runs
    values = {(row["protocol"], row["seed"], row["metric"]): float(row["value"]) for row in rows}
    for protocol, seed in runs:
        row = next(r for r in rows if (r["protocol"], r["seed"], r["task"]) == (protocol, seed, "icbhi-4class"))
        assert (row["n_train"], row["n_validation"], row["n_test"], row["layer"]) == ("31", "37", "29", "1")
        with np.load(output / "predictions" / f"icbhi-4class-{protocol}-seed{seed}-test.npz") as saved:
            predicted, labels = saved["logits"].argmax(1), saved["labels"]
        specificity = np.mean(predicted[labels == 0] == 0)
        sensitivity = np.mean(predicted[labels != 0] == labels[labels != 0])
        assert values[protocol, seed, "Sp"] == pytest.approx(100 * specificity)
        assert values[protocol, seed, "Se"] == pytest.approx(100 * sensitivity)
        assert values[protocol, seed, "Score"] == pytest.approx(100 * (specificity + sensitivity) / 2)
    report = (output / "results.md").read_text()
    assert "| Model | icbhi-4class<br>Score (%) ↑ | Avg. Score (%) ↑ |" in report
    assert f"| {encoder_folder.name} (fine-tuned) |" in report and f"| {encoder_folder.name} (linear probe) |" in report
    assert (
        "| AST Patch-Mix CL | 62.37 | 62.37 |" in report and "| M2D-X (further PT η=0.3) | **63.29 ± 0.22** |" in report
    )
    assert (output / "plots" / "icbhi-4class-test.png").stat().st_size > 0
    assert not (output / "runs").exists(), "checkpoints of finished runs are removed"


def test_benchmark_refuses_splits_that_cannot_train_or_select(encoder_folder, split_file, tmp_path, capsys):
    args = benchmark_args(encoder_folder, split_file, tmp_path / "bench", "--validation-fraction", "0.05")
    assert cli_main([*args, "--validation-seed", "1"]) == 2  # validation: patient 101, normal cycles only
    assert "icbhi-4class: the validation split needs normal and abnormal rows" in capsys.readouterr().err
    normal_only = write_split(tmp_path, lambda name: name[:3] in ("103", "104"))  # train: patients 101, 102
    assert cli_main(benchmark_args(encoder_folder, normal_only, tmp_path / "bench")) == 2
    assert "icbhi-4class: the training split holds only ['normal'] cycles" in capsys.readouterr().err
    assert cli_main([*args, "--protocols", "finetune,probe"]) == 2
    assert "Unknown protocol 'probe'" in capsys.readouterr().err
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "results.md").write_text("an earlier run")
    assert cli_main(benchmark_args(encoder_folder, split_file, tmp_path / "earlier")) == 2
    assert "is not empty; it already holds results.md: pass --overwrite to replace it, or" in capsys.readouterr().err


def test_linear_probing_freezes_the_encoder_and_fine_tuning_the_patch_embedding(encoder_folder):
    names = ["normal", "crackle", "wheeze", "both"]
    linear = make_model(encoder_folder, names, "linear", LINEAR_RECIPE)
    assert not any(p.requires_grad for p in linear.resp_m2d.parameters())
    assert linear.classifier.weight.requires_grad
    finetuned = make_model(encoder_folder, names, "finetune", FINETUNE_RECIPES["icbhi"])
    frozen = {name for name, p in finetuned.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in finetuned.named_parameters() if ".patch_embeddings." in name}
    assert frozen


def test_schedules_match_torch_schedulers_stepped_per_epoch():
    recipe = FINETUNE_RECIPES["icbhi"]
    steps_per_epoch = 5
    factor = learning_rate_factor(recipe, steps_per_epoch)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=recipe.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40, eta_min=1e-6)  # scl_icbhi2017 main.py
    for epoch in range(recipe.epochs):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            assert recipe.learning_rate * factor(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6)
        optimizer.step()
        scheduler.step()
    exponential = learning_rate_factor(LINEAR_RECIPE, 3)
    assert [exponential(step) for step in (0, 2, 3, 7)] == pytest.approx([1, 1, 0.97, 0.97**2])


def test_class_weights_are_normalized_inverse_frequencies():
    counts = [2063, 1215, 501, 363]  # scl_icbhi2017 main.py's ICBHI training counts
    labels = np.repeat(np.arange(4), counts)
    frequencies = np.array(counts) / sum(counts)
    expected = (1 / frequencies) / (1 / frequencies).sum()
    np.testing.assert_allclose(class_weights(labels, 4).numpy(), expected, rtol=1e-6)
    assert class_weights(np.array([0, 0, 2]), 3)[1] == 0


def task_run(protocol, seed, specificity, sensitivity, task="icbhi-4class", split="test"):
    scores = {"Score": (specificity + sensitivity) / 2, "Sp": specificity, "Se": sensitivity}
    return {
        "task": task, "protocol": protocol, "seed": seed, "test_split": split, "layer": "11", "final_layer": True,
        "best_epoch": 1, "n_train": 10, "n_validation": 4, "n_test": 6, "scores": scores,
    }  # fmt: skip


def test_task_results_use_the_linear_probe_layout_with_the_published_figures(tmp_path):
    runs = [task_run("finetune", 0, 0.8, 0.4), task_run("finetune", 1, 0.6, 0.4), task_run("linear", 0, 0.5, 0.3)]
    sprsound = task_run("finetune", 0, 0.9, 0.5, "sprsound-1-2", "inter_test_2022")
    sprsound["scores"]["AS"] = 0.7
    sprsound["scores"]["Se"] = float("nan")  # no adventitious test event: left out with a note
    paths = write_task_results([*runs, sprsound], tmp_path / "bench", "tiny")
    report = paths["markdown"].read_text()
    # The OPERA table: a column per task (and test split), mean ± std over seeds, the best in bold, per-metric average.
    assert (
        "| Model | icbhi-4class<br>Score (%) ↑ | sprsound-1-2 inter_test_2022<br>Score (%) ↑ | Avg. Score (%) ↑ |"
        in report
    )
    assert "| tiny (fine-tuned) | 55.00 ± 5.00 | **70.00 ± 0.00** | 62.50 |" in report
    assert "| tiny (linear probe) | 40.00 ± 0.00 | – | – |" in report
    assert "| M2D-X (further PT η=0.3) | **63.29 ± 0.22** | – | – |" in report
    assert "| tiny (fine-tuned) | 70.00 ± 0.00 | 70.00 |" in report  # AS beside M2D's SPRSound (Sp + Se) / 2
    assert "| M2D (AudioSet only) | 88.78 | 88.78 |" in report
    assert "| AST Patch-Mix CL | **81.66** | – | – |" in report  # Sp
    assert "sprsound-1-2 inter_test_2022 Se is undefined for finetune seed 0 (left out)." in report
    rows = list(csv.DictReader(paths["csv"].open()))
    scores = [row for row in rows if row["metric"] == "Score" and row["task"] == "icbhi-4class"]
    assert [(row["protocol"], row["seed"]) for row in scores] == [
        ("finetune", "0"), ("finetune", "1"), ("finetune", "mean"), ("finetune", "std"),
        ("linear", "0"), ("linear", "mean"), ("linear", "std"),
    ]  # fmt: skip
    assert [float(row["value"]) for row in scores] == pytest.approx([60, 50, 55, 5, 40, 40, 0])
    assert {r["test_split"] for r in rows if r["task"].startswith("sprsound")} == {"inter_test_2022"}
    assert [path.name for path in paths["plots"]] == ["icbhi-4class-test.png", "sprsound-1-2-inter_test_2022.png"]


def test_task_results_go_into_a_model_card_like_the_opera_benchmarks(tmp_path):
    runs = [task_run("finetune", 0, 0.8, 0.4), task_run("finetune", 1, 0.6, 0.4), task_run("linear", 0, 0.5, 0.3)]
    paths = write_task_results(runs, tmp_path / "bench", "tiny")
    report = json.loads(paths["json"].read_text())["results"]
    score = next(row for row in report if row["protocol"] == "finetune" and row["metric"] == "Score")
    assert (score["mean"], score["std"], score["seeds"]) == (pytest.approx(55), pytest.approx(5), [0, 1])
    folder = tmp_path / "model"
    folder.mkdir()
    write_card(folder, encoder_card(RespM2DConfig(), "m2d_vit_base.pth", "0" * 64))
    assert cli_main(["card", str(folder), "--results", str(paths["json"])]) == 0
    card = (folder / "README.md").read_text()
    assert "| icbhi-4class (icbhi-4class (test)) | Score | 11 (final) | 55.000 ± 5.000 | 2 seeds |" in card
    assert "| icbhi-4class (icbhi-4class (test)) | Sp | 11 (final) | 50.000 ± 0.000 | 1 seeds |" in card
    assert "type: score" in card and "type: specificity" in card and "OPERA's protocol" not in card
    assert paths["plots"][0].stat().st_size > 0


def test_epochs_can_be_selected_on_the_test_split_as_the_published_scripts_do(
    encoder_folder, split_file, tmp_path, monkeypatch, capsys
):
    selecting_rows = []

    class RecordingTrainer(finetune_benchmark.Trainer):
        def __init__(self, *args, **kwargs):
            selecting_rows.append(len(kwargs["eval_dataset"]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(finetune_benchmark, "Trainer", RecordingTrainer)
    output = tmp_path / "bench"
    args = benchmark_args(encoder_folder, split_file, output, "--seeds", "0", "--protocols", "linear", *VALIDATION_104)
    assert cli_main([*args, "--select_epoch_on", "train"]) == 2
    error = capsys.readouterr().err
    assert "cannot select epochs on 'train'; choose validation or a test split of this task: ['test']" in error
    assert selecting_rows == [] and not output.exists()
    assert cli_main([*args, "--select_epoch_on", "test"]) == 0
    assert selecting_rows == [29]  # the test split's cycles, not validation's 37
    notes = json.loads((output / "results.json").read_text())["notes"]
    assert any("epochs selected on the test split" in note and "optimistic" in note for note in notes)
    selecting_rows.clear()
    assert cli_main([*args, "--output_dir", str(tmp_path / "default")]) == 0
    assert selecting_rows == [37]
