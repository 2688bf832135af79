"""Resuming `resp-hf finetune`: whose checkpoint, whether its files are whole, whether it fits the settings."""

import json
import pathlib
import shutil

import pytest
import torch

from resp_hf.cli import main as cli_main
from resp_hf.synthetic import write_two_class_recordings
from resp_hf.training.finetune import SETTINGS_NAME, prepare_output_dir


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("recordings")
    for seed, (split, count) in enumerate((("train", 4), ("validation", 2))):
        write_two_class_recordings(root / split, per_class=count, seed=seed, seconds=(0.8, 1.5))
    return root


def run_arguments(encoder_folder, dataset, output, *extra):
    """Arguments of `resp-hf finetune` for a two-step run, evaluated and saved at each step."""
    arguments = ["finetune", "--model_name_or_path", str(encoder_folder), "--dataset", str(dataset)]
    arguments += ["--output_dir", str(output), "--max_steps", "2", "--per_device_train_batch_size", "4"]
    arguments += ["--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "1", "--save_steps", "1"]
    return arguments + ["--disable_tqdm", "true", "--keep_checkpoints", *extra]


@pytest.fixture(scope="module")
def finished_run(recordings, encoder_folder, tmp_path_factory):
    """A finished two-step run that kept its checkpoints (checkpoint-1 and checkpoint-2)."""
    output = tmp_path_factory.mktemp("finished") / "run"
    assert cli_main(run_arguments(encoder_folder, recordings, output)) == 0
    return output


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return shutil.copytree(finished_run, tmp_path / "run")


def error_line(capsys):
    """The command's error message, checked to be one line (progress bars and load reports left out)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("resp-hf finetune: error: "), lines
    return lines[0]


def test_each_checkpoint_records_the_settings_it_was_written_with(finished_run):
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        record = json.loads((finished_run / "checkpoints" / checkpoint / SETTINGS_NAME).read_text())
        assert record["options"] == {"layer_decay": 1.0, "lora_rank": None, "lora_alpha": None}
        assert record["config"]["pooling"] == "frequency" and record["config"]["id2label"] == {
            "0": "breath",
            "1": "wheeze",
        }


def test_another_runs_checkpoint_resumes_into_a_used_folder_only_with_overwrite(
    finished_run, recordings, encoder_folder, tmp_path, capsys
):
    other = shutil.copytree(finished_run, tmp_path / "other", ignore=shutil.ignore_patterns("checkpoints"))
    (other / "results.json").write_text("earlier results")
    checkpoint = finished_run / "checkpoints" / "checkpoint-1"
    arguments = run_arguments(encoder_folder, recordings, other, "--resume_from_checkpoint", str(checkpoint))
    assert cli_main(arguments) == 2
    message = error_line(capsys)
    assert f"The output folder {other} is not empty" in message and "--overwrite_output_dir" in message
    assert f"resuming from {checkpoint}, which is not one of its checkpoints" in message
    assert (other / "results.json").read_text() == "earlier results"
    assert cli_main([*arguments, "--overwrite_output_dir", "--layer_decay", "0.5"]) == 2  # a later check fails:
    assert "other settings" in error_line(capsys)
    assert (other / "results.json").read_text() == "earlier results"  # nothing was removed before it

    assert cli_main([*arguments, "--overwrite_output_dir"]) == 0
    assert "validation" in json.loads((other / "results.json").read_text())
    assert sorted(path.name for path in (other / "checkpoints").iterdir()) == ["checkpoint-2"]  # continued at step 1


def test_the_output_folders_own_checkpoints_resume_without_overwrite(tmp_path):
    output = tmp_path / "out"
    checkpoint = output / "checkpoints" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (output / "results.json").write_text("{}")
    prepare_output_dir(output, overwrite=False, checkpoint=checkpoint)
    (tmp_path / "link").symlink_to(output)
    prepare_output_dir(tmp_path / "link", overwrite=False, checkpoint=checkpoint)  # the same folder by another name
    elsewhere = tmp_path / "elsewhere" / "checkpoint-1"
    with pytest.raises(ValueError, match=f"resuming from {elsewhere}, which is not one of its checkpoints"):
        prepare_output_dir(output, overwrite=False, checkpoint=elsewhere)
    assert prepare_output_dir(output, overwrite=True, checkpoint=elsewhere)  # the earlier run is to be replaced
    assert not prepare_output_dir(output, overwrite=False, checkpoint=checkpoint)  # continued


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, problem",
    [
        ("optimizer.pt", "truncated or not a weights-only torch file: PytorchStreamReader failed reading zip archive"),
        ("scheduler.pt", "truncated or not a weights-only torch file: PytorchStreamReader failed reading zip archive"),
        ("rng_state.pth", "truncated or not a weights-only torch file: "),
        ("model.safetensors", "truncated or not a safetensors file: Error while deserializing header"),
        ("trainer_state.json", "not valid JSON: "),
        ("config.json", "not valid JSON: Unterminated string"),
        (SETTINGS_NAME, "not valid JSON: "),
    ],
)
def test_a_damaged_checkpoint_file_is_named_before_anything_is_loaded(name, problem, run_copy, encoder_folder, capsys):
    path = run_copy / "checkpoints" / "checkpoint-2" / name
    truncate(path)
    missing_data = run_copy.parent / "no-data"  # the check comes first: the data is not even looked for
    arguments = run_arguments(encoder_folder, missing_data, run_copy, "--resume_from_checkpoint", "latest")
    assert cli_main(arguments) == 2
    assert error_line(capsys).startswith(f"resp-hf finetune: error: {path} is damaged ({problem}")


class WritesAFile:
    """A pickled object whose loading would run code (create `path`), as a crafted optimizer.pt could."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_checking_a_checkpoint_runs_no_code_from_its_files(run_copy, encoder_folder, capsys):
    marker = run_copy.parent / "code-ran"
    path = run_copy / "checkpoints" / "checkpoint-2" / "optimizer.pt"
    torch.save({"state": WritesAFile(marker)}, path)
    arguments = run_arguments(encoder_folder, run_copy.parent / "no-data", run_copy, "--resume_from_checkpoint")
    assert cli_main([*arguments, "latest"]) == 2
    assert f"{path} is damaged (truncated or not a weights-only torch file: Weights only load failed)" in error_line(
        capsys
    )
    assert not marker.exists()


def test_a_missing_or_incomplete_checkpoint_is_refused(run_copy, encoder_folder, tmp_path, capsys):
    checkpoints = run_copy / "checkpoints"
    resume = run_arguments(encoder_folder, tmp_path / "no-data", run_copy, "--resume_from_checkpoint")
    assert cli_main([*resume, str(checkpoints / "checkpoint-7")]) == 2
    assert f"--resume_from_checkpoint {checkpoints / 'checkpoint-7'}: no such checkpoint folder" in error_line(capsys)
    (checkpoints / "checkpoint-2" / "trainer_state.json").unlink()
    assert cli_main([*resume, "latest"]) == 2
    assert f"{checkpoints / 'checkpoint-2'} is not a Trainer checkpoint: it has no trainer_state.json" in error_line(
        capsys
    )
    (checkpoints / "checkpoint-1" / "model.safetensors").unlink()
    assert cli_main([*resume, str(checkpoints / "checkpoint-1")]) == 2
    assert f"{checkpoints / 'checkpoint-1'} holds no model weights" in error_line(capsys)
    shutil.rmtree(checkpoints)
    assert cli_main([*resume, "latest"]) == 2
    assert f"--resume_from_checkpoint latest: there is no checkpoint in {checkpoints}" in error_line(capsys)


def three_class_recordings(recordings, folder):
    """`recordings` with a third class (a copy of the first)."""
    shutil.copytree(recordings, folder)
    for split in ("train", "validation"):
        shutil.copytree(folder / split / "breath", folder / split / "crackle")
    return folder


@pytest.mark.parametrize(
    "options, difference",
    [
        (["--pooling", "mean"], "pooling 'frequency' (this run: 'mean')"),
        (["--classifier_layer", "weighted"], "classifier_layer None (this run: 'weighted')"),
        (["--layer_decay", "0.5"], "--layer_decay 1.0 (this run: 0.5)"),
        (["--lora_rank", "4"], "--lora_rank None (this run: 4)"),
        ("three classes", "id2label {0: 'breath', 1: 'wheeze'} (this run: {0: 'breath', 1: 'crackle', 2: 'wheeze'})"),
    ],
)
def test_resuming_with_other_settings_names_them(options, difference, run_copy, recordings, encoder_folder, capsys):
    data = recordings
    if options == "three classes":
        data, options = three_class_recordings(recordings, run_copy.parent / "three"), []
    arguments = run_arguments(encoder_folder, data, run_copy, "--resume_from_checkpoint", "latest", *options)
    assert cli_main(arguments) == 2
    checkpoint = run_copy / "checkpoints" / "checkpoint-2"
    message = error_line(capsys)
    assert f"The checkpoint at {checkpoint} was written by a run with other settings: {difference}." in message
    assert not (run_copy / "checkpoints" / "checkpoint-3").exists()


def test_a_checkpoint_without_a_record_is_compared_by_its_config(run_copy, recordings, encoder_folder, capsys):
    checkpoint = run_copy / "checkpoints" / "checkpoint-2"
    (checkpoint / SETTINGS_NAME).unlink()  # as written before checkpoints recorded their settings
    resume = run_arguments(encoder_folder, recordings, run_copy, "--resume_from_checkpoint", "latest")
    assert cli_main([*resume, "--pooling", "mean"]) == 2
    assert "other settings: pooling 'frequency' (this run: 'mean')." in error_line(capsys)
    resume[resume.index("--max_steps") + 1] = "3"
    assert cli_main(resume) == 0
    assert (run_copy / "checkpoints" / "checkpoint-3" / SETTINGS_NAME).is_file()
