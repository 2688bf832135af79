import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from conftest import REPO_ROOT, tiny_model
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Sequence
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForAudioClassification

from resp_hf import RespM2DFeatureExtractor
from resp_hf.cli import main as cli_main
from resp_hf.data import load_any_dataset, load_audio_folder
from resp_hf.synthetic import write_two_class_recordings
from resp_hf.training.finetune import (
    AudioClassificationCollator,
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


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    model = tiny_model(seed=0)
    model.save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(model.config).save_pretrained(folder)
    return folder


def test_trainer_fine_tuning_separates_held_out_classes_and_reloads(recordings, encoder_folder, tmp_path):
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
    test_metrics = json.loads((output / "test_results.json").read_text())
    assert test_metrics["test_auroc"] > 0.9

    model = AutoModelForAudioClassification.from_pretrained(output, trust_remote_code=True).eval()
    assert model.config.id2label == {0: "breath", 1: "wheeze"}
    extractor = RespM2DFeatureExtractor.from_pretrained(output)
    test = load_audio_folder(recordings)["test"]
    audio = [soundfile.read(path, dtype="float32")[0] for path in test["audio"]]
    with torch.no_grad():
        logits = model(**extractor(audio, sampling_rate=RATE)).logits
    auroc = roc_auc_score(test["label"], logits.softmax(-1)[:, 1].numpy())
    assert auroc == pytest.approx(test_metrics["test_auroc"], abs=1e-6)  # the saved model is the one evaluated

    card = (output / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and "model-index" in card and "Not a medical device" in card
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


def test_auto_best_model_metric_follows_the_problem_type(recordings, encoder_folder, tmp_path):
    arguments = ["--model_name_or_path", str(encoder_folder), "--dataset", str(recordings / "train")]
    arguments += ["--output_dir", str(tmp_path / "out"), "--max_steps", "1"]
    trainer, _ = finetune(*build_parser().parse_args_into_dataclasses(args=arguments))
    assert trainer.args.metric_for_best_model == "auroc" and trainer.args.greater_is_better


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
