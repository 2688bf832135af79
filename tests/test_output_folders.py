"""Commands that write their output folder whole refuse one holding the current folder before doing any work."""

import types

import pytest

import resp_hf
import resp_hf.convert
import resp_hf.export
import resp_hf.opera.commands
import resp_hf.tasks.commands
import resp_hf.training.pretrain_data
from resp_hf.training import pretrain


def never(*args, **kwargs):
    raise AssertionError("the command started its work before checking its output folder")


def convert(tmp_path, output):
    return resp_hf.convert.convert_m2d_checkpoint(tmp_path / "checkpoint.pth", output, overwrite=True)


def export(tmp_path, output):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return resp_hf.export.export_onnx(tmp_path / "model", output, overwrite=True)


def opera_task(tmp_path, output):
    return resp_hf.opera.commands.build_and_save("T1", tmp_path / "opera", output, overwrite=True)


def cycle_task(tmp_path, output):
    return resp_hf.tasks.commands.build_and_save_task("icbhi-4class", output, icbhi_root=tmp_path, overwrite=True)


def pretraining_lists(tmp_path, output):
    return resp_hf.training.pretrain_data.build_pretraining_lists(output, tmp_path, tmp_path, tmp_path, overwrite=True)


def log_mels(tmp_path, output):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(b"")
    config = resp_hf.RespM2DConfig()
    return resp_hf.training.pretrain_data.precompute_log_mels(tmp_path / "audio", output, config, overwrite=True)


# command -> (its call, the module and name of what its work starts with, made to fail the test if reached)
COMMANDS = {
    "convert": (convert, resp_hf.convert, "read_m2d_checkpoint", never),
    "export onnx": (export, resp_hf.export, "RespM2DConfig", types.SimpleNamespace(from_pretrained=never)),
    "opera task": (opera_task, resp_hf.opera.commands, "build_task", never),
    "cycle task": (cycle_task, resp_hf.tasks.commands, "build_task_dataset", never),
    "pretraining lists": (pretraining_lists, resp_hf.training.pretrain_data, "icbhi_training_recordings", never),
    "log-mels": (log_mels, resp_hf.training.pretrain_data, "atomic_folder", never),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["the output", "a folder under it"])
def test_a_command_refuses_to_replace_the_current_folder_before_its_work(tmp_path, monkeypatch, command, where):
    run, module, work, replacement = COMMANDS[command]
    output = tmp_path / "out"
    (output / "inner").mkdir(parents=True)
    (output / "inner" / "mine.txt").write_text("kept")
    monkeypatch.chdir(output if where == "the output" else output / "inner")
    monkeypatch.setattr(module, work, replacement)
    with pytest.raises(ValueError, match="is or holds the current folder") as error:
        run(tmp_path, output)
    assert len(str(error.value).splitlines()) == 1
    assert (output / "inner" / "mine.txt").read_text() == "kept"


@pytest.mark.parametrize("output", pretrain.RUN_OUTPUTS)
def test_pretraining_refuses_a_current_folder_inside_an_output_it_replaces(tmp_path, monkeypatch, output):
    (tmp_path / "run" / output).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "run" / output)
    args = types.SimpleNamespace(resume=None, overwrite=True, init="scratch", data=[])
    with pytest.raises(ValueError, match=f"{tmp_path / 'run' / output} is or holds the current folder"):
        pretrain.check_output_dir(tmp_path / "run", args)


def test_pretraining_may_run_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = types.SimpleNamespace(resume=None, overwrite=False, init="scratch", data=[])
    pretrain.check_output_dir(tmp_path, args)  # an empty folder, which the run writes into without replacing it


def test_log_mels_are_not_written_inside_their_audio_folder(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(b"")
    output = tmp_path / "audio" / "log-mels"
    with pytest.raises(ValueError, match=f"^The output {output} lies inside the input folder {tmp_path / 'audio'}"):
        resp_hf.training.pretrain_data.precompute_log_mels(tmp_path / "audio", output, resp_hf.RespM2DConfig())
    assert sorted(path.name for path in (tmp_path / "audio").iterdir()) == ["a.wav"]
