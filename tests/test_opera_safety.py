"""Hostile and damaged OPERA checkouts: no code runs from data, and every bad file is a one-line error naming it."""

import re
import shutil

import numpy as np
import pytest
from conftest import OPERA

from resp_hf.cli import main as cli_main
from resp_hf.opera import OperaDataError, build_task
from resp_hf.opera.files import load_array, read_csv_rows


class RunsCode:
    """Pickled, this object asks the unpickler to call `exec` on a line that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def save_hostile_npy(path, marker):
    """An object `.npy` whose pickle stream would run code under `np.load(..., allow_pickle=True)`."""
    np.save(path, np.array([RunsCode(marker), "a-uuid"], dtype=object), allow_pickle=True)


def checkout_with(tmp_path, *folders):
    """A copy of the miniature OPERA checkout's `folders` (relative paths)."""
    root = tmp_path / "OPERA"
    for folder in folders:
        shutil.copytree(OPERA / folder, root / folder)
    return root


def test_the_hostile_file_would_run_code_under_a_plain_np_load(tmp_path):
    """Guards the test itself: the file is really hostile."""
    marker = tmp_path / "marker"
    save_hostile_npy(tmp_path / "hostile.npy", marker)
    np.load(tmp_path / "hostile.npy", allow_pickle=True)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize(
    "task, relative",
    [
        ("T5", "datasets/coughvid/coughvid__val_uuids.npy"),  # OPERA's own file is a pickled object array
        ("T1", "datasets/covidUK/exhalation_val_files_downsample.npy"),  # OPERA's own file is a plain string array
    ],
)
def test_a_hostile_npy_runs_no_code_in_opera_list_or_build(tmp_path, capsys, task, relative):
    root = checkout_with(tmp_path, "datasets/coughvid", "datasets/covidUK", "feature/coviduk_eval")
    marker = tmp_path / "marker"
    save_hostile_npy(root / relative, marker)

    assert cli_main(["opera", "list", "--opera-root", str(root)]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("T")}
    assert "no: " in listing[task] and relative.split("/")[-1] in listing[task]
    assert not marker.exists()

    assert cli_main(["opera", "build", task, "--opera-root", str(root), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(root / relative) in error and "refuses to load" in error
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_operas_pickled_uuid_lists_still_load_and_other_objects_are_refused(tmp_path):
    uuids = load_array(OPERA / "datasets/coughvid/coughvid__val_uuids.npy")
    assert uuids.dtype == object and len(uuids) > 100 and all(isinstance(u, str) for u in uuids.tolist())
    np.save(tmp_path / "dict.npy", np.array([{"not": "a string"}], dtype=object), allow_pickle=True)
    with pytest.raises(OperaDataError, match="dict.npy is not a numpy array of strings and numbers"):
        load_array(tmp_path / "dict.npy")
    plain = OPERA / "datasets/covidUK/cough_val_files_downsample.npy"
    (tmp_path / "truncated.npy").write_bytes(plain.read_bytes()[:90])
    with pytest.raises(OperaDataError, match="truncated.npy is not a readable .npy array"):
        load_array(tmp_path / "truncated.npy")


def test_truncated_pickled_list_is_named(tmp_path):
    source = OPERA / "datasets/coughvid/coughvid__val_uuids.npy"
    (tmp_path / "cut.npy").write_bytes(source.read_bytes()[:500])
    with pytest.raises(OperaDataError, match="cut.npy holds a pickled object that resp_hf refuses"):
        load_array(tmp_path / "cut.npy")


def damage_coughvid(root, text):
    (root / "datasets/coughvid/metadata_compiled.csv").write_bytes(text)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"uuid,age\n\xff\xfe\x00garbled\n", r"metadata_compiled.csv is not UTF-8 text"),
        (b"id,datetime,cough_detected,age,gender,status\nx,y,0.9,3,male,healthy\n", r"no column 'uuid'"),
        (b"uuid,cough_detected,age,gender,status\nu1,0.9,3,male,healthy,extra\n", r"line 2: 6 fields where"),
        (b"uuid,cough_detected,age,gender,status\nu1,0.9,3\n", r"line 2: 3 fields where the header has 5"),
        (b"uuid,cough_detected,age,gender,status\n,,,,\n", r"line 2: no values"),
    ],
    ids=["garbled", "renamed-column", "extra-field", "truncated-row", "empty-row"],
)
def test_damaged_csv_metadata_is_one_error_naming_file_and_line(tmp_path, capsys, content, message):
    root = checkout_with(tmp_path, "datasets/coughvid")
    damage_coughvid(root, content)
    code = cli_main(["opera", "build", "T5", "--opera-root", str(root), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert str(root / "datasets/coughvid/metadata_compiled.csv") in error
    assert re.search(message, error), error


def test_a_bad_value_names_file_line_and_column(tmp_path):
    root = checkout_with(tmp_path, "datasets/copd")
    labels = root / "datasets/copd/Labels.csv"
    lines = labels.read_text(encoding="utf-8-sig").splitlines()
    lines[3] = lines[3].replace("COPD", "COPDX", 1)
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(OperaDataError, match=r"Labels.csv, line 4, column 'Diagnosis': 'COPDX\d' is not COPD0-COPD4"):
        build_task("T11", root)


def test_damaged_icbhi_text_table_names_the_line(tmp_path):
    root = checkout_with(tmp_path, "datasets/icbhi", "feature/icbhidisease_eval")
    table = root / "datasets/icbhi/ICBHI_Challenge_diagnosis.txt"
    lines = table.read_text().splitlines()
    lines[2] = lines[2].split()[0]
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(OperaDataError, match=r"ICBHI_Challenge_diagnosis.txt, line 3: 1 field\(s\) where 2 are needed"):
        build_task("T7", root, allow_missing=True)
    table.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(OperaDataError, match="ICBHI_Challenge_diagnosis.txt is not UTF-8 text"):
        build_task("T7", root, allow_missing=True)


def mmlung_checkout(tmp_path, rows):
    openpyxl = pytest.importorskip("openpyxl")
    root = tmp_path / "OPERA"
    (root / "datasets/mmlung").mkdir(parents=True)
    (root / "feature/mmlung_eval").mkdir(parents=True)
    workbook = openpyxl.Workbook()
    for row in rows:
        workbook.active.append(row)
    workbook.save(root / "datasets/mmlung/All_path.xlsx")
    np.save(root / "feature/mmlung_eval/label.npy", np.ones((len(rows) - 1, 3)))
    return root


def test_damaged_xlsx_metadata_is_one_error_naming_the_file(tmp_path):
    root = mmlung_checkout(tmp_path, [["Deep_Breath_file", "O_Single_file"], ["./a/b.wav", "./a/c.wav"]])
    workbook = root / "datasets/mmlung/All_path.xlsx"
    workbook.write_bytes(workbook.read_bytes()[:200])
    with pytest.raises(OperaDataError, match="All_path.xlsx is not a readable .xlsx workbook"):
        build_task("T13", root)
    renamed = mmlung_checkout(tmp_path / "renamed", [["Breath", "O_Single_file"], ["./a/b.wav", "./a/c.wav"]])
    with pytest.raises(OperaDataError, match="All_path.xlsx: no column 'Deep_Breath_file'"):
        build_task("T13", renamed)
    bad_row = mmlung_checkout(tmp_path / "row", [["Deep_Breath_file", "O_Single_file"], ["", "./a/c.wav"]] * 1)
    np.save(bad_row / "feature/mmlung_eval/label.npy", np.ones((1, 3)))
    with pytest.raises(OperaDataError, match="row 2, column 'Deep_Breath_file': '' is not a path"):
        build_task("T13", bad_row)


def test_csv_rows_carry_their_line_numbers(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n\n3,4\n")
    assert [row["_row"] for row in read_csv_rows(table, required=("a",))] == [2, 4]


def test_opera_build_refuses_a_non_empty_folder_unless_overwrite(tmp_path, capsys):
    root = checkout_with(tmp_path, "datasets/KAUH", "feature/kauh_eval")
    output = tmp_path / "t10"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    arguments = ["opera", "build", "T10", "--opera-root", str(root), "--output", str(output), "--allow-missing"]
    assert cli_main(arguments) == 2
    assert "is not empty; it already holds notes.txt: pass --overwrite to replace it, or" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "mine"
    assert cli_main([*arguments, "--overwrite"]) == 0
    assert (output / "opera_task.json").is_file() and not (output / "notes.txt").exists()
    assert not [path for path in tmp_path.iterdir() if ".partial-" in path.name]
    assert cli_main([*arguments, "--output", str(tmp_path / "fresh")]) == 0  # a new folder needs no flag
    (tmp_path / "file").write_text("x")
    assert cli_main([*arguments, "--output", str(tmp_path / "file"), "--overwrite"]) == 2
    assert "is a file; pass a folder" in capsys.readouterr().err


def replace_first(path, value):
    """Saves the `.npy` list at `path` with its first entry replaced by `value`."""
    entries = load_array(path).tolist()
    np.save(path, np.array([value, *entries[1:]]))


@pytest.mark.parametrize(
    "escape",
    ["datasets/icbhi/../../../../../../tmp/evil/160_2b3_Lr_mc_AKGC417L.wav", "/tmp/evil/160_2b3_Lr_mc_AKGC417L.wav"],
    ids=["dot-dot", "absolute"],
)
def test_a_manifest_path_outside_the_checkout_is_an_error_even_with_allow_missing(tmp_path, escape):
    root = checkout_with(tmp_path, "datasets/icbhi", "feature/icbhidisease_eval")
    manifest = root / "feature/icbhidisease_eval/sound_dir_loc.npy"
    replace_first(manifest, escape)
    with pytest.raises(OperaDataError, match=re.escape(f"{manifest}: entry {escape!r} is not a path inside the OPERA")):
        build_task("T7", root, allow_missing=True)


def test_a_file_list_or_metadata_path_outside_the_checkout_is_an_error(tmp_path):
    root = checkout_with(tmp_path, "datasets/covidUK", "datasets/coughvid")
    split_list = root / "datasets/covidUK/exhalation_val_files_downsample.npy"
    replace_first(split_list, "../../../../etc/passwd")
    with pytest.raises(OperaDataError, match=rf"{re.escape(str(split_list))}: entry '.*\.\./etc/passwd' is not a path"):
        build_task("T1", root, allow_missing=True)
    table = root / "datasets/coughvid/metadata_compiled.csv"
    rows = table.read_text(encoding="utf-8-sig").splitlines()
    uuid = rows[1].split(",")[0]
    table.write_text("\n".join([rows[0], rows[1].replace(uuid, "../../../../evil", 1), *rows[2:]]) + "\n")
    replace_first(root / "datasets/coughvid/coughvid__train_uuids.npy", "../../../../evil")
    with pytest.raises(OperaDataError, match=r"metadata_compiled.csv, line 2: entry '.*\.\./evil.wav' is not a path"):
        build_task("T5", root, allow_missing=True)


def test_a_workbook_path_outside_the_checkout_is_an_error(tmp_path):
    root = mmlung_checkout(tmp_path, [["Deep_Breath_file", "O_Single_file"], ["./../../../evil.wav", "./a/c.wav"]])
    with pytest.raises(OperaDataError, match=r"All_path.xlsx, row 2, column 'Deep_Breath_file': entry .* not a path"):
        build_task("T13", root, allow_missing=True)


def test_a_manifest_array_that_is_not_a_list_names_the_file(tmp_path):
    root = checkout_with(tmp_path, "datasets/icbhi", "feature/icbhidisease_eval")
    labels = root / "feature/icbhidisease_eval/labels.npy"
    np.save(labels, np.array("COPD"))
    with pytest.raises(OperaDataError, match=rf"{re.escape(str(labels))} holds an array of shape \(\); OPERA's lists"):
        build_task("T7", root, allow_missing=True)


def test_repeated_ids_in_metadata_are_an_error_naming_the_file_and_id(tmp_path):
    folders = "datasets/coughvid", "datasets/icbhi", "feature/icbhidisease_eval", "datasets/copd", "datasets/covidUK"
    root = checkout_with(tmp_path, *folders)
    table = root / "datasets/coughvid/metadata_compiled.csv"
    rows = table.read_text(encoding="utf-8-sig").splitlines()
    table.write_text("\n".join([*rows, rows[2], rows[1]]) + "\n")
    uuid = rows[1].split(",")[0]  # the first id that repeats, in file order
    with pytest.raises(OperaDataError, match=rf"metadata_compiled.csv: uuid '{uuid}' is listed 2 times"):
        build_task("T5", root, allow_missing=True)
    diagnosis = root / "datasets/icbhi/ICBHI_Challenge_diagnosis.txt"
    diagnosis.write_text(diagnosis.read_text() + "101\tCOPD\n")
    with pytest.raises(OperaDataError, match=r"ICBHI_Challenge_diagnosis.txt: patient '101' is listed 2 times"):
        build_task("T7", root, allow_missing=True)
    labels = root / "datasets/copd/Labels.csv"
    rows = labels.read_text(encoding="utf-8-sig").splitlines()
    labels.write_text("\n".join([*rows, rows[1]]) + "\n")
    with pytest.raises(OperaDataError, match=rf"Labels.csv: Patient ID '{rows[1].split(',')[0]}' is listed 2 times"):
        build_task("T11", root, allow_missing=True)
    participants = root / "datasets/covidUK/participant_metadata.csv"
    participants.write_text("participant_identifier,covid_test_result\nP0,Negative\nP0,Positive\n")
    (root / "datasets/covidUK/audio_metadata.csv").write_text("participant_identifier,exhalation_file_name\nP0,a.wav\n")
    with pytest.raises(OperaDataError, match=r"participant_metadata.csv: participant_identifier 'P0' is listed 2"):
        build_task("T1", root, allow_missing=True)
