import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import soxr
import torch
from conftest import OPERA, REPO_ROOT
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Sequence
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForAudioClassification

from resp_hf import RespM2DFeatureExtractor
from resp_hf.cli import main as cli_main
from resp_hf.data import load_any_dataset, load_audio_folder
from resp_hf.synthetic import write_two_class_recordings
from resp_hf.tasks.icbhi import build_icbhi_cycles
from resp_hf.training.finetune import (
    AudioClassificationCollator,
    BreakTiesByLossCallback,
    build_parser,
    finetune,
    label_task,
    layer_wise_parameter_groups,
)

RATE = 16000


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("recordings")
    for seed, (split, count) in enumerate((("train", 16), ("validation", 6), ("test", 10))):
        write_two_class_recordings(root / split, per_class=count, seed=seed, seconds=(0.8, 2.0))
    return root


def test_trainer_fine_tuning_separates_held_out_classes_and_reloads(recordings, encoder_folder, tmp_path, capsys):
    output = tmp_path / "classifier"
    code = cli_main(
        [
            "finetune",
            "--model_name_or_path",
            str(encoder_folder),
            "--dataset",
            str(recordings),
            "--output_dir",
            str(output),
            "--num_train_epochs",
            "4",
            "--learning_rate",
            "1e-3",
            "--per_device_train_batch_size",
            "8",
            "--seed",
            "0",
            "--layer_decay",
            "0.75",
        ]
    )
    assert code == 0
    test_metrics = json.loads((output / "results.json").read_text())["test"]
    assert test_metrics["auroc"] > 0.9
    assert "Removed the training checkpoints" in capsys.readouterr().out
    # Ready to share: the model, its extractor, remote code, card and results; no Trainer checkpoints.
    assert sorted(p.name for p in output.iterdir() if not p.name.endswith(".py")) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "results.json",
    ]

    model = AutoModelForAudioClassification.from_pretrained(output, trust_remote_code=True).eval()
    assert model.config.id2label == {0: "breath", 1: "wheeze"}
    extractor = RespM2DFeatureExtractor.from_pretrained(output)
    test = load_audio_folder(recordings)["test"]
    audio = [soundfile.read(path, dtype="float32")[0] for path in test["audio"]]
    with torch.no_grad():
        logits = model(**extractor(audio, sampling_rate=RATE)).logits
    auroc = roc_auc_score(test["label"], logits.softmax(-1)[:, 1].numpy())
    assert auroc == pytest.approx(test_metrics["auroc"], abs=1e-6)  # the saved model is the one evaluated

    card = (output / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and "Not a medical device" in card
    front_matter = card.split("---")[1]
    # A local encoder and dataset: no base_model or model-index naming local folders; the results are in the text.
    assert "base_model" not in front_matter and "model-index" not in front_matter
    assert str(tmp_path) not in card and str(encoder_folder) not in card
    assert f"`{recordings.name}` (a local folder)" in card
    assert f"| test | {test_metrics['accuracy']:.4f} | {test_metrics['auroc']:.4f} |" in card
    assert sorted(p.name for p in output.glob("*.py")) == [
        "audio_utils_resp_m2d.py",
        "configuration_resp_m2d.py",
        "feature_extraction_resp_m2d.py",
        "modeling_resp_m2d.py",
        "pipeline_resp_m2d.py",
    ]


def test_collator_pads_and_builds_labels_for_each_problem_type(tmp_path):
    extractor = RespM2DFeatureExtractor()
    paths = []
    for i, seconds in enumerate((0.5, 1.2)):
        paths.append(str(tmp_path / f"{i}.wav"))
        soundfile.write(paths[-1], np.zeros(int(seconds * RATE), dtype=np.float32), RATE)
    rows = [{"audio": paths[0], "label": 1}, {"audio": {"path": paths[1], "bytes": None}, "label": 0}]
    batch = AudioClassificationCollator(extractor, "audio", "label", "single_label_classification", 2)(rows)
    assert batch["input_features"].shape == (2, 80, 121)
    assert batch["attention_mask"].sum(1).tolist() == [51, 121]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    multi = [{"audio": paths[0], "label": [0, 2]}, {"audio": paths[1], "label": []}]
    labels = AudioClassificationCollator(extractor, "audio", "label", "multi_label_classification", 3)(multi)["labels"]
    assert labels.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    values = [{"audio": paths[0], "label": 2.5}, {"audio": paths[1], "label": 3.0}]
    labels = AudioClassificationCollator(extractor, "audio", "label", "regression", 1)(values)["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [2.5, 3.0]


def test_label_types_choose_the_problem_type():
    assert label_task(ClassLabel(names=["a", "b"]), "label") == ("single_label_classification", ["a", "b"])
    assert label_task(Sequence(ClassLabel(names=["x", "y"])), "label") == ("multi_label_classification", ["x", "y"])
    dataset = Dataset.from_dict({"label": [1.5, 2.0]})
    assert label_task(dataset.features["label"], "label") == ("regression", None)
    with pytest.raises(ValueError, match="Label column 'label' has type"):
        label_task(Dataset.from_dict({"label": ["a", "b"]}).features["label"], "label")


def test_layer_wise_learning_rate_decay_groups():
    from conftest import tiny_config

    from resp_hf import RespM2DForAudioClassification

    model = RespM2DForAudioClassification(tiny_config(num_labels=2))
    groups = layer_wise_parameter_groups(model, learning_rate=1e-3, layer_decay=0.5, weight_decay=0.05)
    rate_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert rate_of[id(model.classifier.weight)] == (1e-3, 0.05)
    assert rate_of[id(model.resp_m2d.encoder.layer[1].mlp.fc1.weight)] == (5e-4, 0.05)
    assert rate_of[id(model.resp_m2d.encoder.layer[0].mlp.fc1.weight)] == (2.5e-4, 0.05)
    assert rate_of[id(model.resp_m2d.embeddings.position_embeddings)] == (1.25e-4, 0.0)
    assert rate_of[id(model.resp_m2d.encoder.layer[0].layernorm_before.bias)] == (2.5e-4, 0.0)
    assert len(rate_of) == sum(p.requires_grad for p in model.parameters())
    model.freeze_encoder()
    frozen = layer_wise_parameter_groups(model, learning_rate=1e-3, layer_decay=0.5, weight_decay=0.05)
    assert sum(len(g["params"]) for g in frozen) == 2  # classifier weight and bias


def test_audio_folder_and_saved_datasets(recordings, tmp_path):
    splits = load_audio_folder(recordings)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["train"].features["label"].names == ["breath", "wheeze"]
    assert splits["test"].num_rows == 20 and sorted(set(splits["test"]["label"])) == [0, 1]
    flat = load_audio_folder(recordings / "train")
    assert list(flat) == ["train"] and flat["train"].num_rows == 32
    saved = DatasetDict({"train": flat["train"].cast_column("audio", Audio())})
    saved.save_to_disk(tmp_path / "saved")
    reloaded = load_any_dataset(tmp_path / "saved")
    assert isinstance(reloaded["train"].features["audio"], Audio)
    with pytest.raises(ValueError, match="no class subfolders"):
        load_audio_folder(recordings / "train" / "breath")
    with pytest.raises(FileNotFoundError, match="Audio folder not found"):
        load_audio_folder(tmp_path / "nowhere")


def test_fine_tuning_on_a_saved_dataset_with_an_audio_column(recordings, encoder_folder, tmp_path):
    dataset = load_audio_folder(recordings).cast_column("audio", Audio())  # decoding it would need torchcodec
    dataset.save_to_disk(tmp_path / "saved")
    output = tmp_path / "probe"
    code = cli_main(
        [
            "finetune",
            "--model_name_or_path",
            str(encoder_folder),
            "--dataset",
            str(tmp_path / "saved"),
            "--output_dir",
            str(output),
            "--num_train_epochs",
            "1",
            "--freeze_encoder",
            "--pooling",
            "mean",
            "--classifier_layer",
            "1",
        ]
    )
    assert code == 0
    model = AutoModelForAudioClassification.from_pretrained(output)
    assert model.config.freeze_encoder and model.config.pooling == "mean" and model.config.classifier_layer == 1
    encoder = AutoModelForAudioClassification.from_pretrained(encoder_folder, num_labels=2).resp_m2d
    assert torch.equal(model.resp_m2d.encoder.layer[0].mlp.fc1.weight, encoder.encoder.layer[0].mlp.fc1.weight)


@pytest.mark.parametrize("fault", ["class order", "shared recording", "no label"])
def test_saved_splits_that_disagree_are_refused_before_the_model_loads(recordings, tmp_path, capsys, fault):
    dataset = load_audio_folder(recordings)
    rows, features = dataset["test"].to_dict(), dataset["test"].features.copy()
    if fault == "class order":  # the same recordings and meanings, classes numbered the other way round
        rows["label"] = [1 - label for label in rows["label"]]
        features["label"] = ClassLabel(names=features["label"].names[::-1])
    if fault == "shared recording":
        rows["audio"][0] = dataset["train"][0]["audio"]
    if fault == "no label":
        rows["label"][0] = -1
    dataset["test"] = Dataset.from_dict(rows, features=features)
    dataset.save_to_disk(tmp_path / "saved")
    args = ["finetune", "--model_name_or_path", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "saved")]
    assert cli_main([*args, "--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    expected = {
        "class order": "the test split's 'label' feature",
        "shared recording": "the train and test splits hold the same audio",
        "no label": "the test split has a row without a valid label (row 0: -1)",
    }
    assert expected[fault] in error.strip().splitlines()[-1]  # one line, after the datasets progress bars


def test_finetune_example_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, REPO_ROOT / "examples" / "finetune_synthetic.py", tmp_path, "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "breath_000.wav: {'score':" in result.stdout and "'label': 'breath'" in result.stdout
    assert (tmp_path / "classifier" / "model.safetensors").is_file()


def test_training_script_is_the_finetune_command(recordings, encoder_folder, tmp_path):
    script = REPO_ROOT / "training" / "finetune.py"
    result = subprocess.run(
        [
            sys.executable,
            script,
            "--model_name_or_path",
            encoder_folder,
            "--dataset",
            recordings / "train",
            "--output_dir",
            tmp_path / "out",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation: accuracy" in result.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_classifier_layer_argument():
    from resp_hf.training.finetune import parse_classifier_layer

    assert [parse_classifier_layer(v) for v in (None, "None", "weighted", "3")] == [None, None, "weighted", 3]
    with pytest.raises(ValueError, match="--classifier_layer must be None, 'weighted' or a layer index, got 'top'"):
        parse_classifier_layer("top")


def test_user_set_best_model_metric_and_optimizer_settings_are_kept(recordings, encoder_folder, tmp_path):
    arguments = [
        "--model_name_or_path",
        str(encoder_folder),
        "--dataset",
        str(recordings),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "1",
        "--eval_strategy",
        "steps",
        "--save_strategy",
        "steps",
        "--metric_for_best_model",
        "accuracy",
        "--layer_decay",
        "0.75",
        "--adam_beta2",
        "0.98",
        "--adam_epsilon",
        "1e-6",
    ]
    trainer, _ = finetune(*build_parser().parse_args_into_dataclasses(args=arguments))
    assert trainer.args.metric_for_best_model == "accuracy" and trainer.args.greater_is_better
    groups = trainer.optimizer.param_groups
    assert all(group["betas"] == (0.9, 0.98) and group["eps"] == 1e-6 for group in groups)
    assert len({group["initial_lr"] for group in groups}) > 1  # still layer-wise


def saved_cycle_dataset(folder):
    """A small ICBHI cycle dataset (`path`, `start`, `end` columns, no audio column) saved to `folder`."""
    cycles = build_icbhi_cycles(OPERA / "datasets" / "icbhi", validation_fraction=0)[0]["test"]
    names = cycles.features["label"].names
    normal = [i for i, label in enumerate(cycles["label"]) if names[label] == "normal"]
    wheeze = [i for i, label in enumerate(cycles["label"]) if names[label] == "wheeze"]
    dataset = DatasetDict(
        train=cycles.select(normal[:6] + wheeze[:4]), validation=cycles.select(normal[6:9] + wheeze[4:7])
    )
    dataset.save_to_disk(folder)
    return folder


def test_a_saved_cycle_dataset_fine_tunes_on_the_slices_of_its_recordings(encoder_folder, tmp_path):
    saved = saved_cycle_dataset(tmp_path / "cycles")
    rows = list(load_any_dataset(str(saved))["train"].select(range(3)))
    extractor = RespM2DFeatureExtractor()
    batch = AudioClassificationCollator(extractor, "audio", "label", "single_label_classification", 4)(rows)
    expected = []
    for row in rows:  # the whole recording resampled, then cut at int(seconds * rate) as the ICBHI recipe does
        audio, rate = soundfile.read(row["path"], dtype="float32")
        audio = soxr.resample(audio, rate, RATE, quality="HQ").astype(np.float32)
        expected.append(audio[int(row["start"] * RATE) : int(row["end"] * RATE)])
    torch.testing.assert_close(batch["input_features"], extractor(expected, sampling_rate=RATE)["input_features"])
    arguments = ["--model_name_or_path", str(encoder_folder), "--dataset", str(saved), "--max_steps", "1"]
    assert cli_main(["finetune", *arguments, "--output_dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_auto_best_model_metric_follows_the_problem_type(recordings, encoder_folder, tmp_path):
    arguments = ["--model_name_or_path", str(encoder_folder), "--dataset", str(recordings / "train")]
    arguments += ["--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    trainer, _ = finetune(*build_parser().parse_args_into_dataclasses(args=arguments))
    assert trainer.args.metric_for_best_model == "auroc" and trainer.args.greater_is_better
    assert any(isinstance(callback, BreakTiesByLossCallback) for callback in trainer.callback_handler.callbacks)


def test_a_missing_local_dataset_path_is_not_looked_up_on_the_hub(tmp_path):
    for missing in ("./nope", str(tmp_path / "nope"), "~/nope-resp-hf"):
        with pytest.raises(FileNotFoundError, match="nope"):
            load_any_dataset(missing)


def test_cli_reports_a_missing_model_in_one_line_and_shows_the_traceback_on_request(recordings, tmp_path, capsys):
    arguments = ["finetune", "--model_name_or_path", str(tmp_path / "absent"), "--dataset", str(recordings)]
    arguments += ["--output_dir", str(tmp_path / "out")]
    assert cli_main(arguments) == 2
    assert "resp-hf finetune: error:" in capsys.readouterr().err
    with pytest.raises(OSError):
        cli_main(["--traceback", *arguments])


def finetune_arguments(encoder_folder, dataset, output, *extra):
    """Command-line arguments of a short fine-tuning run (two steps, evaluated and saved at each)."""
    arguments = ["--model_name_or_path", str(encoder_folder), "--dataset", str(dataset), "--output_dir", str(output)]
    arguments += ["--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_strategy", "steps"]
    return arguments + ["--save_strategy", "steps", "--eval_steps", "1", "--save_steps", "1", *extra]


@pytest.mark.parametrize("layout", ["one class", "empty class folder"])
def test_a_folder_without_two_classes_is_refused_before_training(layout, encoder_folder, tmp_path, capsys):
    data = write_two_class_recordings(tmp_path / "data", per_class=3)
    if layout == "one class":
        shutil.rmtree(data / "wheeze")
    else:
        for path in (data / "wheeze").iterdir():
            path.unlink()
    output = tmp_path / "out"
    assert cli_main(["finetune", *finetune_arguments(encoder_folder, data, output)]) == 2
    message = "\n".join(line for line in capsys.readouterr().err.splitlines() if "error" in line)  # no progress bars
    assert message.startswith("resp-hf finetune: error: ") and len(message.splitlines()) == 1 and str(data) in message
    assert ("at least two classes" if layout == "one class" else "holds no audio files") in message
    assert not output.exists()  # refused before Trainer was created


def test_hidden_folders_and_files_are_not_classes_or_recordings(tmp_path):
    data = write_two_class_recordings(tmp_path / "data", per_class=2)
    (data / ".ipynb_checkpoints").mkdir()
    (data / "breath" / "._breath_000.wav").write_bytes(b"\0\5\26\7")  # a macOS resource fork, not audio
    split = load_audio_folder(data)["train"]
    assert split.features["label"].names == ["breath", "wheeze"] and split.num_rows == 4


def test_a_non_empty_output_folder_needs_overwrite_or_resume(recordings, encoder_folder, tmp_path, capsys):
    output = tmp_path / "out"
    arguments = finetune_arguments(encoder_folder, recordings / "train", output)
    assert cli_main(["finetune", *arguments, "--keep_checkpoints"]) == 0
    assert "Training checkpoints (with optimizer state) are in" in capsys.readouterr().out
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert not list(output.glob("checkpoint-*"))
    before = (output / "model.safetensors").read_bytes()

    assert cli_main(["finetune", *arguments]) == 2
    message = capsys.readouterr().err
    assert f"The output folder {output} is not empty" in message and "--overwrite_output_dir" in message
    assert (output / "model.safetensors").read_bytes() == before and (output / "checkpoints").is_dir()

    resumed = finetune_arguments(encoder_folder, recordings / "train", output, "--resume_from_checkpoint", "latest")
    resumed[resumed.index("--max_steps") + 1] = "3"
    trainer, _ = finetune(*build_parser().parse_args_into_dataclasses(args=resumed))
    assert trainer.state.global_step == 3
    assert [row["step"] for row in trainer.state.log_history if "eval_loss" in row] == [1, 2, 3, 3]  # and the final
    assert not (output / "checkpoints").exists()  # removed at the end without --keep_checkpoints

    (output / "stale.txt").write_text("kept")
    (output / "checkpoints" / "checkpoint-9").mkdir(parents=True)  # an earlier run's, which must not be resumed
    assert cli_main(["finetune", *arguments, "--overwrite", "--keep_checkpoints"]) == 0
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (output / "stale.txt").read_text() == "kept"  # only what a run writes is replaced


def test_errors_name_the_command_line_flag_on_the_command_line(encoder_folder, tmp_path, capsys):
    data = tmp_path / "stereo"
    for name in ("breath", "wheeze"):
        (data / name).mkdir(parents=True)
        for index in range(3):
            stereo = np.random.default_rng(index).uniform(-0.1, 0.1, (8000, 2)).astype(np.float32)
            soundfile.write(data / name / f"{index}.wav", stereo, RATE)
    arguments = finetune_arguments(encoder_folder, data, tmp_path / "out")
    with pytest.raises(ValueError, match="Pass downmix=True"):  # the Python API speaks Python
        finetune(*build_parser().parse_args_into_dataclasses(args=arguments))
    assert cli_main(["finetune", *arguments, "--overwrite"]) == 2
    message = capsys.readouterr().err
    assert "Pass --downmix to average the channels" in message and "downmix=True" not in message
    assert cli_main(["finetune", *arguments, "--overwrite", "--downmix"]) == 0


def test_no_evaluation_during_training_keeps_the_last_model(recordings, encoder_folder, tmp_path):
    arguments = ["--model_name_or_path", str(encoder_folder), "--dataset", str(recordings), "--max_steps", "1"]
    arguments += ["--output_dir", str(tmp_path / "out"), "--eval_strategy", "no"]
    args, training_args = build_parser().parse_args_into_dataclasses(args=arguments)
    assert not training_args.load_best_model_at_end
    trainer, results = finetune(args, training_args)
    assert trainer.state.best_global_step is None and "auroc" in results["validation"]
    assert (tmp_path / "out" / "model.safetensors").is_file()


class ScalarRegressor(torch.nn.Module):
    """y = w x + b with a squared loss: a model whose validation loss falls epoch by epoch."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x, labels=None):
        prediction = self.linear(x).squeeze(-1)
        return {"loss": ((prediction - labels) ** 2).mean(), "logits": prediction}


@pytest.mark.parametrize("break_ties", [True, False])
def test_tied_validation_scores_are_broken_by_the_lower_validation_loss(break_ties, tmp_path):
    from transformers import Trainer, TrainingArguments

    rows = [{"x": torch.tensor([x]), "labels": torch.tensor(2 * x + 1)} for x in torch.linspace(-1, 1, 16).tolist()]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        learning_rate=0.05,
        per_device_train_batch_size=4,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="auroc",
        report_to="none",
        use_cpu=True,
    )
    torch.manual_seed(0)
    trainer = Trainer(
        model=ScalarRegressor(),
        args=arguments,
        train_dataset=rows,
        eval_dataset=rows,
        compute_metrics=lambda prediction: {"auroc": 1.0},  # every epoch ties
        callbacks=[BreakTiesByLossCallback()] if break_ties else [],
    )
    trainer.train()
    losses = {row["step"]: row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row}
    assert list(losses.values()) == sorted(losses.values(), reverse=True)  # each epoch has a lower loss
    expected = max(losses) if break_ties else min(losses)  # without the callback Trainer keeps the first
    assert trainer.state.best_global_step == expected
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{expected}")
    assert trainer.evaluate()["eval_loss"] == pytest.approx(losses[expected])  # the best model was loaded


def test_a_tie_with_a_higher_loss_keeps_the_earlier_best():
    from transformers import TrainerState, TrainingArguments

    arguments = TrainingArguments(output_dir="unused", metric_for_best_model="auroc", report_to="none")
    state = TrainerState(best_metric=0.9, best_global_step=10)
    state.log_history = [{"step": 10, "eval_loss": 0.5, "eval_auroc": 0.9}]
    callback = BreakTiesByLossCallback()
    callback.on_evaluate(arguments, state, None, metrics={"eval_auroc": 0.9, "eval_loss": 0.6})
    assert state.best_metric == 0.9
    callback.on_evaluate(arguments, state, None, metrics={"eval_auroc": 0.9, "eval_loss": 0.4})
    assert state.best_metric < 0.9 and state.best_metric == np.nextafter(0.9, 0)


def test_lora_trains_adapters_and_saves_a_merged_model_and_the_adapters(recordings, encoder_folder, tmp_path):
    from peft import PeftModel

    output = tmp_path / "lora"
    arguments = finetune_arguments(encoder_folder, recordings / "train", output, "--lora-rank", "4")
    arguments += ["--learning_rate", "1e-2"]
    assert cli_main(["finetune", *arguments]) == 0
    adapter = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert sorted(adapter["target_modules"]) == ["fc1", "fc2", "proj", "qkv"]
    assert not (output / "adapter_config.json").exists()  # the top folder loads as a plain model
    assert adapter["base_model_name_or_path"] is None  # a local encoder: no path written into a shared folder
    assert sorted(p.name for p in (output / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    merged = AutoModelForAudioClassification.from_pretrained(output, trust_remote_code=True).eval()
    base = AutoModelForAudioClassification.from_pretrained(encoder_folder, num_labels=2).eval()
    with_adapters = PeftModel.from_pretrained(
        AutoModelForAudioClassification.from_pretrained(encoder_folder, num_labels=2), output / "adapter"
    ).eval()
    features = RespM2DFeatureExtractor.from_pretrained(output)(noise_clips(), sampling_rate=RATE)
    with torch.no_grad():
        expected = with_adapters(**features).logits
        torch.testing.assert_close(merged(**features).logits, expected, atol=1e-5, rtol=1e-5)
    merged_block, base_block = merged.resp_m2d.encoder.layer[0], base.resp_m2d.encoder.layer[0]
    assert not torch.equal(merged_block.attention.qkv.weight, base_block.attention.qkv.weight)  # adapted
    assert torch.equal(merged_block.layernorm_before.weight, base_block.layernorm_before.weight)  # not trained


def noise_clips():
    return [np.random.default_rng(seed).uniform(-0.1, 0.1, RATE).astype(np.float32) for seed in range(2)]


def test_lora_refuses_settings_it_would_ignore(recordings, encoder_folder, tmp_path, capsys):
    arguments = finetune_arguments(encoder_folder, recordings / "train", tmp_path / "o", "--lora_rank", "4")
    assert cli_main(["finetune", *arguments, "--freeze_encoder"]) == 2
    assert "--lora_rank cannot be combined with --freeze_encoder" in capsys.readouterr().err
    assert cli_main(["finetune", *arguments[:-1], "0"]) == 2
    assert "--lora_rank must be at least 1, got 0" in capsys.readouterr().err


def test_a_feature_extractor_that_disagrees_with_the_model_is_refused(recordings, encoder_folder, tmp_path, capsys):
    folder = tmp_path / "edited"
    shutil.copytree(encoder_folder, folder)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**settings, "mean": settings["mean"] + 1.0}))
    arguments = ["--model_name_or_path", str(folder), "--dataset", str(recordings), "--max_steps", "1"]
    assert cli_main(["finetune", *arguments, "--output_dir", str(tmp_path / "out")]) == 2
    assert "disagree on the front end: mean=" in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_refused(recordings, encoder_folder, tmp_path, capsys):
    (tmp_path / "model.bin").write_text("not a folder")
    arguments = finetune_arguments(encoder_folder, recordings, tmp_path / "model.bin")
    assert cli_main(["finetune", *arguments]) == 2
    assert f"--output_dir {tmp_path / 'model.bin'} is a file" in capsys.readouterr().err


def test_a_training_split_with_one_class_present_is_refused(encoder_folder, tmp_path):
    rows = Dataset.from_dict({"audio": ["a.wav", "b.wav"], "label": [1, 1]})
    rows.cast_column("label", ClassLabel(names=["healthy", "copd"])).save_to_disk(tmp_path / "saved")
    arguments = finetune_arguments(encoder_folder, tmp_path / "saved", tmp_path / "out", "--eval_split", "train")
    with pytest.raises(ValueError, match=r"has recordings of \['copd'\] only \(classes: \['healthy', 'copd'\]\)"):
        finetune(*build_parser().parse_args_into_dataclasses(args=arguments))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--per_device_train_batch_size", "-2"], "--per_device_train_batch_size must be at least 1, got -2."),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size must be at least 1, got 0."),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1, got 0."),
        (["--learning_rate", "-1"], "--learning_rate must be a finite number above 0, got -1.0."),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be at least 0, got -1."),
        (
            ["--num_train_epochs", "0"],
            "--num_train_epochs must be a finite number above 0 when --max_steps does not set the length, got 0.0.",
        ),
    ],
)
def test_training_settings_that_fail_late_or_train_nothing_are_refused_before_loading(tmp_path, capsys, extra, message):
    output = tmp_path / "out"
    arguments = ["finetune", "--model_name_or_path", str(tmp_path / "absent"), "--dataset", str(tmp_path / "absent")]
    assert cli_main([*arguments, "--output_dir", str(output), *extra]) == 2
    assert capsys.readouterr().err == f"resp-hf finetune: error: {message}\n"  # before the model or data is looked for
    assert not output.exists()
    assert cli_main([*arguments, "--output_dir", str(output), "--num_train_epochs", "0", "--max_steps", "2"]) == 2
    assert "absent" in capsys.readouterr().err  # --max_steps sets the length: refused for the missing data only


def test_a_failed_runs_folder_is_refused_advising_resume_only_when_it_holds_a_checkpoint(tmp_path, capsys):
    output = tmp_path / "out"
    (output / "checkpoints").mkdir(parents=True)  # left by a run that failed before its first save
    arguments = ["finetune", "--model_name_or_path", str(tmp_path / "absent"), "--dataset", str(tmp_path / "absent")]
    assert cli_main([*arguments, "--output_dir", str(output)]) == 2
    assert capsys.readouterr().err == (
        f"resp-hf finetune: error: The output folder {output} is not empty; it already holds checkpoints: pass "
        "--overwrite_output_dir to replace it, or choose another folder.\n"
    )
    (output / "checkpoints" / "checkpoint-2").mkdir()
    assert cli_main([*arguments, "--output_dir", str(output)]) == 2
    assert (
        "pass --resume_from_checkpoint latest to continue its run, or --overwrite_output_dir" in capsys.readouterr().err
    )
