"""
Damaged OPERA data: misspelt values, repeated or overlapping entries and bad audio are one-line errors naming the file
(bad audio is left out and listed with allow_missing); nothing is dropped, relabelled or moved between splits silently.
"""

import json
import re

import numpy as np
import pytest
import soundfile
from datasets import load_from_disk
from test_opera import write_files
from test_opera_safety import checkout_with

from resp_hf.cli import main as cli_main
from resp_hf.opera import OperaDataError, build_task, get_task
from resp_hf.opera.files import load_array, read_csv_rows
from resp_hf.opera.task_rows import kauh_metadata

ICBHI = "datasets/icbhi"
KAUH_AUDIO = "datasets/KAUH/AudioFiles"
UK_LISTS = "datasets/covidUK/cough_{}_files_downsample.npy"
COUGHVID_LISTS = "datasets/coughvid/coughvid_{}_uuids.npy"


def edit_lines(path, edit):
    """Rewrites a text file with `edit(lines)` (a list of lines without their endings)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


def replace_in_line(path, start, old, new):
    """Replaces `old` by `new` in the line of a text file that starts with `start`."""
    edit_lines(path, lambda lines: [line.replace(old, new) if line.startswith(start) else line for line in lines])


def save_list(path, values):
    """Saves `values` as a 1-D `.npy` array, as OPERA saves its lists."""
    np.save(path, np.array(values))


def build_error(root, task_id, capsys):
    """The one-line error `resp-hf opera build` prints for the task."""
    code = cli_main(["opera", "build", task_id, "--opera-root", str(root), "--output", str(root.parent / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    return error


# --- values --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Test", "val"])
def test_an_unknown_official_icbhi_split_names_file_line_and_value(tmp_path, value):
    root = checkout_with(tmp_path, ICBHI)  # without OPERA's manifest: the official split file decides
    official = root / ICBHI / "ICBHI_challenge_train_test.txt"
    replace_in_line(official, "104_1b1_Al_sc_Litt3200", "\ttest", f"\t{value}")
    line = next(i for i, text in enumerate(official.read_text().splitlines(), 1) if text.startswith("104_1b1_Al"))
    message = rf"{re.escape(str(official))}, line {line}, column 'group': '{value}' is not train or test"
    with pytest.raises(OperaDataError, match=message):
        build_task("T7", root, allow_missing=True)


@pytest.mark.parametrize(
    "task_id, folders, split_file",
    [
        ("T10", ("datasets/KAUH", "feature/kauh_eval"), "feature/kauh_eval/train_test_split.npy"),
        ("T11", ("datasets/copd", "feature/copd_eval"), "feature/copd_eval/train_test_split.npy"),
    ],
)
def test_an_unknown_split_in_operas_manifest_names_file_index_and_value(tmp_path, capsys, task_id, folders, split_file):
    root = checkout_with(tmp_path, *folders)
    splits = load_array(root / split_file).tolist()
    save_list(root / split_file, [splits[0], "trian", *splits[2:]])
    error = build_error(root, task_id, capsys)
    assert f"{root / split_file}, index 1: 'trian' is not one of 'train', 'val', 'test'" in error


def test_an_unknown_icbhi_diagnosis_or_demographic_names_file_line_and_column(tmp_path):
    root = checkout_with(tmp_path, ICBHI)
    diagnosis = root / ICBHI / "ICBHI_Challenge_diagnosis.txt"
    replace_in_line(diagnosis, "104", "COPD", "Copd")
    with pytest.raises(OperaDataError, match=r"diagnosis.txt, line 4, column 'class': 'Copd' is not an ICBHI diagnos"):
        build_task("T7", root, allow_missing=True)
    replace_in_line(diagnosis, "104", "Copd", "COPD")
    demographics = root / ICBHI / "ICBHI_Challenge_demographic_information.txt"
    replace_in_line(demographics, "102", "0.75", "abc")
    with pytest.raises(OperaDataError, match=r"information.txt, line 2, column 'Age': 'abc' is not an age in years"):
        build_task("T7", root, allow_missing=True)


def test_icbhi_metadata_with_a_byte_order_mark_reads_as_without(tmp_path):
    root = checkout_with(tmp_path, ICBHI, "feature/icbhidisease_eval")
    demographics = root / ICBHI / "ICBHI_Challenge_demographic_information.txt"
    edit_lines(demographics, lambda lines: sorted(lines, key=lambda line: not line.startswith("102")))  # 102 first
    for name in ("ICBHI_Challenge_diagnosis.txt", "ICBHI_challenge_train_test.txt", demographics.name):
        path = root / ICBHI / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    test = build_task("T7", root, allow_missing=True)["test"].remove_columns("audio")
    row = test[test["subject_id"].index("102")]
    assert (row["age"], row["sex"], row["label"]) == (0.75, "F", 0)


def test_an_empty_patient_id_in_respiratory_tr_labels_is_an_error(tmp_path):
    root = checkout_with(tmp_path, "datasets/copd")
    labels = root / "datasets/copd/Labels.csv"
    edit_lines(labels, lambda lines: [*lines, ",COPD9,"])
    with pytest.raises(OperaDataError, match=r"Labels.csv, line 44, column 'Patient ID': '' is not a patient id"):
        build_task("T11", root)


def test_an_unknown_coughvid_or_uk_covid_value_is_an_error(tmp_path):
    root = checkout_with(tmp_path, "datasets/coughvid", "datasets/covidUK")
    table = root / "datasets/coughvid/metadata_compiled.csv"
    replace_in_line(table, "00039425", ",male,", ",Male,")  # line 2
    with pytest.raises(OperaDataError, match=r"metadata_compiled.csv, line 2, column 'gender': 'Male' is not 'female'"):
        build_task("T6", root, allow_missing=True)
    replace_in_line(table, "00039425", ",15,Male,", ",abc,male,")
    with pytest.raises(OperaDataError, match=r"metadata_compiled.csv, line 2, column 'age': 'abc' is not a number"):
        build_task("T6", root, allow_missing=True)
    name = load_array(root / UK_LISTS.format("training"))[0]
    (root / "datasets/covidUK/audio_metadata.csv").write_text(f"participant_identifier,cough_file_name\nP0,{name}\n")
    (root / "datasets/covidUK/participant_metadata.csv").write_text(
        "participant_identifier,covid_test_result\nP0,Postive\n"
    )
    message = r"participant_metadata.csv, line 2, column 'covid_test_result': 'Postive' is not Negative or Positive"
    with pytest.raises(OperaDataError, match=message):
        build_task("T2", root, allow_missing=True)


def test_an_age_in_a_kauh_file_name_must_be_a_number():
    with pytest.raises(OperaDataError, match=r"KAUH recording 'BP1_Asthma,E W,P L L,abc,M.wav', age field: 'abc' is"):
        kauh_metadata("BP1_Asthma,E W,P L L,abc,M.wav")


def test_a_repeated_required_csv_column_is_an_error(tmp_path):
    table = tmp_path / "Labels.csv"
    table.write_text("Patient ID,Diagnosis,Diagnosis\nH002,COPD4,COPD0\n")
    with pytest.raises(OperaDataError, match="Labels.csv: the header names the column 'Diagnosis' 2 times"):
        read_csv_rows(table, required=("Patient ID", "Diagnosis"))


# --- repeated and overlapping entries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task_id, folders", [("T10", ("datasets/KAUH", "feature/kauh_eval")), ("T7", (ICBHI, "feature/icbhidisease_eval"))]
)
def test_a_path_repeated_in_operas_manifest_is_an_error(tmp_path, capsys, task_id, folders):
    root = checkout_with(tmp_path, *folders)
    manifest = sorted((root / folders[1]).glob("*.npy"))
    for path in manifest:  # the first entry repeated, in all the aligned arrays
        entries = load_array(path).tolist()
        save_list(path, [*entries, entries[0]])
    paths = next(path for path in manifest if path.name.startswith("sound_dir_loc"))
    first = load_array(paths)[0]
    assert f"{paths}: path '{first}' is listed 2 times" in build_error(root, task_id, capsys)


@pytest.mark.parametrize(
    "task_id, lists",
    [
        ("T2", (UK_LISTS.format("training"), UK_LISTS.format("testing"))),
        ("T2", (UK_LISTS.format("training"), UK_LISTS.format("val"))),
        ("T5", (COUGHVID_LISTS.format("_train"), COUGHVID_LISTS.format("gender_test"))),
    ],
    ids=["uk-train-test", "uk-train-val", "coughvid-train-test"],
)
def test_an_entry_in_two_split_lists_is_an_error_naming_both(tmp_path, task_id, lists):
    root = checkout_with(tmp_path, "datasets/covidUK", "datasets/coughvid")  # no manifest: the lists decide
    first, second = (root / path for path in lists)
    entry = load_array(first).tolist()[0]
    save_list(second, [*load_array(second).tolist(), entry])
    with pytest.raises(OperaDataError, match=re.escape(f"{second}: entry {entry!r} is also listed in {first}")):
        build_task(task_id, root, allow_missing=True)
    save_list(first, [*load_array(first).tolist(), entry])
    with pytest.raises(OperaDataError, match=re.escape(f"{first}: entry {entry!r} is listed 2 times")):
        build_task(task_id, root, allow_missing=True)


def test_a_uk_covid_file_listed_but_not_in_operas_manifest_is_an_error(tmp_path):
    root = checkout_with(tmp_path, "datasets/covidUK", "feature/coviduk_eval")
    training = root / UK_LISTS.format("training")
    save_list(training, [*load_array(training).tolist(), "EXTRA_cough.wav"])
    with pytest.raises(OperaDataError, match=r"T2: .* 1 files not in OPERA's manifest, e.g. \[.*/EXTRA_cough.wav'\]"):
        build_task("T2", root, allow_missing=True)


# --- files ---------------------------------------------------------------------------------------------------------


def test_a_npz_archive_under_a_npy_name_is_one_error_and_marks_the_task_unbuildable(tmp_path, capsys):
    root = checkout_with(tmp_path, "datasets/KAUH", "feature/kauh_eval")
    labels = root / "feature/kauh_eval/labels_both.npy"
    with open(labels, "rb") as handle:
        values = np.load(handle)
    with open(labels, "wb") as handle:
        np.savez(handle, labels=values)
    message = f"{labels} is a .npz archive, not a .npy array"
    assert message in build_error(root, "T10", capsys)
    assert cli_main(["opera", "list", "--opera-root", str(root)]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("T")}
    assert f"no: {message}" in listing["T10"]


def keep_one_copd0(lines):
    """Relabels every COPD0 patient but the first as COPD1: stage 0 then has a single patient."""
    first = next(index for index, line in enumerate(lines) if ",COPD0," in line)
    return [line.replace(",COPD0,", ",COPD1,") if index > first else line for index, line in enumerate(lines)]


def test_an_impossible_respiratory_tr_split_names_task_and_file_and_list_marks_it(tmp_path, capsys):
    root = checkout_with(tmp_path, "datasets/copd", "feature/copd_eval")
    labels = root / "datasets/copd/Labels.csv"
    edit_lines(labels, keep_one_copd0)
    expected = (
        f"T11: cannot split the patients of {labels} into OPERA's train, validation and test sets: the class(es) 0"
    )
    assert expected in build_error(root, "T11", capsys)
    assert cli_main(["opera", "list", "--opera-root", str(root)]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("T")}
    assert f"no: {expected}" in listing["T11"]
    edit_lines(labels, lambda lines: lines[:1])  # the header alone
    assert f"T11: cannot split the patients of {labels}" in build_error(root, "T11", capsys)


def test_an_impossible_ssbpr_or_coswara_split_names_the_task(tmp_path):
    root = tmp_path / "OPERA"
    write_files(root, [f"datasets/SSBPR/male/s0/0-{n}-0.wav" for n in range(4)] + ["datasets/SSBPR/male/s0/0-9-1.wav"])
    with pytest.raises(
        OperaDataError, match="T12: cannot split the SSBPR recordings .*: the class.es. 1 have a single"
    ):
        build_task("T12", root)
    names, labels = (root / path for path in get_task("T8").manifest)
    names.parent.mkdir(parents=True)
    save_list(names, [f"datasets/Coswara-Data/Extracted_data/d/{n}/cough-shallow.wav" for n in range(5)])
    save_list(labels, [0, 0, 0, 0, 1])
    with pytest.raises(OperaDataError, match="T8: cannot split the recordings of feature/coswara_eval/cough_aligned"):
        build_task("T8", root)


def write_corrupt_kauh(root):
    """Truncates one KAUH recording, writes NaN into another and makes a third stereo; returns their paths."""
    names = "BP10_Asthma,E W,P R U,59,M.wav", "BP12_Asthma,E W,P L L,50,F.wav", "BP15_Asthma,E W,P R U,49,F.wav"
    truncated, with_nan, stereo = (f"{KAUH_AUDIO}/{name}" for name in names)
    data = (root / truncated).read_bytes()
    (root / truncated).write_bytes(data[: len(data) // 3])
    audio, rate = soundfile.read(root / with_nan, dtype="float32")
    audio[100:200] = np.nan
    soundfile.write(root / with_nan, audio, rate, subtype="FLOAT")
    audio, rate = soundfile.read(root / stereo, dtype="float32")
    soundfile.write(root / stereo, np.stack([audio, audio], axis=1), rate, subtype="PCM_16")
    return truncated, with_nan, stereo


def test_truncated_or_nan_audio_is_left_out_and_listed_and_stereo_is_kept_with_a_note(tmp_path, capsys):
    root = checkout_with(tmp_path, "datasets/KAUH", "feature/kauh_eval")
    truncated, with_nan, stereo = write_corrupt_kauh(root)
    output = tmp_path / "t10"
    arguments = ["opera", "build", "T10", "--opera-root", str(root), "--output", str(output), "--allow-missing"]
    assert cli_main(arguments) == 0
    description = json.loads((output / "opera_task.json").read_text())
    unreadable = description["unreadable_audio"]
    assert set(unreadable) == {truncated, with_nan}
    assert "is truncated" in unreadable[truncated] and "NaN or Inf" in unreadable[with_nan]
    assert any("1 recordings have several channels" in note and stereo in note for note in description["notes"])
    kept = {path for part in load_from_disk(str(output)).values() for path in part["path"]}
    assert stereo in kept and truncated not in kept and with_nan not in kept


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"task": "T10"}',
            r"opera_task.json: 'dataset' \(str\), 'license' \(str\), 'redistributable' \(bool\) missing",
        ),
        ("[1, 2]", "opera_task.json holds a JSON list, not an object"),
        ("{not json", "opera_task.json is not valid JSON"),
        (
            '{"task": "T12", "dataset": "SSBPR", "license": "x", "redistributable": "false"}',
            r"'redistributable' \(bool\) missing or of another type",
        ),
    ],
    ids=["missing-keys", "list", "not-json", "string-flag"],
)
def test_push_with_a_damaged_task_file_is_one_error_naming_it(tmp_path, capsys, content, message):
    (tmp_path / "opera_task.json").write_text(content)
    assert cli_main(["opera", "push", str(tmp_path), "me/task"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(tmp_path / "opera_task.json") in error
    assert re.search(message, error), error
