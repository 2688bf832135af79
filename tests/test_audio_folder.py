"""`load_audio_folder` (`resp-hf finetune --dataset FOLDER`): what it cannot place or read is an error naming it."""

import pytest

from resp_hf.data import load_audio_folder
from resp_hf.synthetic import write_two_class_recordings


@pytest.fixture
def folder(tmp_path):
    for split in ("train", "test"):
        write_two_class_recordings(tmp_path / "data" / split, per_class=2, seconds=(0.1, 0.2))
    return tmp_path / "data"


def test_a_complete_folder_loads_with_hidden_files_left_out(folder):
    (folder / ".cache").mkdir()
    (folder / "train" / "breath" / ".ipynb_checkpoints").mkdir()
    (folder / "train" / "breath" / ".ipynb_checkpoints" / "notes.txt").write_text("x")
    splits = load_audio_folder(folder)
    assert {name: split.num_rows for name, split in splits.items()} == {"train": 4, "test": 4}


def test_a_class_folder_beside_the_split_folders_is_an_error_naming_it(folder):
    write_two_class_recordings(folder / "wheeze_extra", per_class=1)
    with pytest.raises(ValueError, match=rf"^{folder} holds 1 item\(s\) that are not split folders .*: wheeze_extra\."):
        load_audio_folder(folder)


@pytest.mark.parametrize("name", ["3.m4a", "4.opus", "labels.csv"])
def test_a_file_of_another_type_in_a_class_folder_is_an_error_naming_it(folder, name):
    (folder / "train" / "breath" / name).write_bytes(b"\0" * 100)
    with pytest.raises(
        ValueError, match=rf"{folder / 'train' / 'breath'} holds 1 item\(s\) that are not audio .*: {name}"
    ):
        load_audio_folder(folder)


@pytest.mark.parametrize("place, expected", [("train", "class folders"), (".", "split folders")])
def test_a_loose_file_outside_the_class_folders_is_an_error_naming_it(folder, place, expected):
    root = (folder / place).resolve()
    (root / "loose.wav").write_bytes((folder / "train" / "breath" / "breath_000.wav").read_bytes())
    with pytest.raises(ValueError, match=rf"^{root} holds 1 item\(s\) that are not {expected}.*: loose.wav\."):
        load_audio_folder(folder)
