import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import OPERA
from datasets import DatasetDict, load_from_disk
from sklearn.model_selection import train_test_split

from resp_hf.audio import decode_audio_column
from resp_hf.cli import main as cli_main
from resp_hf.opera import TASKS, OperaDataError, build_task, get_task
from resp_hf.opera.files import carve_validation

SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def tiny_wav(seconds=0.05, rate=16000):
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return buffer.getvalue()


def manifest(root, *names):
    return [np.load(root / name).tolist() for name in names]


def table(dataset):
    """`{relative path: (label, split)}` of a built DatasetDict."""
    return {path: (label, split) for split, part in dataset.items() for path, label in zip(part["path"], part["label"])}


def with_validation(rows, fraction, seed=1337):
    """Expected OPERA validation carve-out: sklearn on the train rows in manifest order (written independently)."""
    train = [i for i, (_, label, split) in enumerate(rows) if split == "train"]
    _, held_out = train_test_split(train, test_size=fraction, random_state=seed, stratify=[rows[i][1] for i in train])
    held_out = set(held_out)
    return {path: (label, "validation" if i in held_out else split) for i, (path, label, split) in enumerate(rows)}


# --- expected tables, computed from OPERA's manifests in the tests' own terms ---------------------------------------


def expected_t7(root):
    paths, labels, splits = manifest(root, *get_task("T7").manifest)
    keep = {"Healthy": 0, "COPD": 1}
    rows = [(p, keep[label], split) for p, label, split in zip(paths, labels, splits) if label in keep]
    return with_validation(rows, 0.2)


def expected_t10(root):
    paths, labels, splits = manifest(root, *get_task("T10").manifest)
    rows = [
        (p, int(label != "healthy"), "train" if s == "train" else "test") for p, label, s in zip(paths, labels, splits)
    ]
    return with_validation(rows, 0.1)


def expected_fixed(task_id):
    def expected(root):
        paths, labels, splits = manifest(root, *get_task(task_id).manifest)
        return {p: (label, SPLIT_NAMES[s]) for p, label, s in zip(paths, labels, splits)}

    return expected


def expected_coswara(task_id):
    def expected(root):
        """OPERA's linear_evaluation_coswara: a stratified 80/20 split, then 20% of the shuffled train part."""
        paths, labels = manifest(root, *get_task(task_id).manifest)
        train, test, train_labels, _ = train_test_split(
            paths, labels, test_size=0.2, random_state=1337, stratify=labels
        )
        _, validation = train_test_split(train, test_size=0.2, random_state=1337, stratify=train_labels)
        split = {p: "train" for p in train} | {p: "validation" for p in validation} | {p: "test" for p in test}
        return {p: (label, split[p]) for p, label in zip(paths, labels)}

    return expected


EXPECTED = {
    "T1": expected_fixed("T1"),
    "T2": expected_fixed("T2"),
    "T5": expected_fixed("T5"),
    "T6": expected_fixed("T6"),
    "T7": expected_t7,
    "T8": expected_coswara("T8"),
    "T9": expected_coswara("T9"),
    "T10": expected_t10,
    "T11": expected_fixed("T11"),
}


@pytest.fixture(scope="module")
def placeholder_checkout(tmp_path_factory):
    """The miniature checkout plus a tiny WAV at every path OPERA's manifests list."""
    root = tmp_path_factory.mktemp("opera") / "OPERA"
    shutil.copytree(OPERA, root)
    wav = tiny_wav()
    for array in root.glob("feature/*/*.npy"):
        values = np.load(array)
        if values.dtype.kind == "U" and str(values[0]).startswith("datasets/"):
            for path in values.tolist():
                target = root / path
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(wav)
    return root


@pytest.mark.parametrize("task_id", sorted(EXPECTED, key=lambda t: int(t[1:])))
def test_tasks_with_a_manifest_reproduce_it_sample_for_sample(placeholder_checkout, task_id):
    dataset = build_task(task_id, placeholder_checkout)
    assert table(dataset) == EXPECTED[task_id](placeholder_checkout)
    task = get_task(task_id)
    assert dataset["train"].features["label"].names == list(task.label_names)
    assert set(dataset) == {"train", "validation", "test"}


@pytest.mark.parametrize("task_id", ["T7", "T10"])
def test_real_icbhi_and_kauh_recordings_build_with_allow_missing(tmp_path, task_id):
    output = tmp_path / task_id
    assert (
        cli_main(["opera", "build", task_id, "--opera-root", str(OPERA), "--output", str(output), "--allow-missing"])
        == 0
    )
    dataset = load_from_disk(str(output))
    expected = EXPECTED[task_id](OPERA)
    present = {path: value for path, value in expected.items() if (OPERA / path).is_file()}
    assert table(dataset) == present and len(present) == (7 if task_id == "T7" else 9)
    description = json.loads((output / "opera_task.json").read_text())
    assert description["task"] == task_id and len(description["missing_audio"]) == len(expected) - len(present)
    decoded = decode_audio_column(dataset)
    for part in decoded.values():
        for row in part:
            audio, path = row["audio"]["array"], Path(row["path"])
            assert audio.dtype == np.float32 and row["audio"]["sampling_rate"] == 16000
            assert len(audio) == pytest.approx(soundfile.info(OPERA / path).duration * 16000, abs=2)


def test_real_icbhi_metadata_columns():
    test = build_task("T7", OPERA, allow_missing=True)["test"].remove_columns("audio")  # no torchcodec needed
    row = test[test["path"].index("datasets/icbhi/ICBHI_final_database/102_1b1_Ar_sc_Meditron.wav")]
    assert row["label"] == 0 and row["subject_id"] == "102" and row["device"] == "Meditron"
    assert row["chest_location"] == "Ar" and row["sex"] == "F" and row["age"] == 0.75


def test_missing_audio_is_an_error_that_counts_and_shows_paths():
    with pytest.raises(
        OperaDataError, match=r"225 of 234 audio files of T10 are missing.*AudioFiles/.*--allow-missing"
    ):
        build_task("T10", OPERA)


def test_corrupt_audio_is_reported_by_name(tmp_path):
    root = tmp_path / "OPERA"
    shutil.copytree(OPERA, root)
    corrupt = root / "datasets/KAUH/AudioFiles/BP12_Asthma,E W,P L L,50,F.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    with pytest.raises(OperaDataError, match="1 audio files of T10 cannot be read: .*BP12_Asthma"):
        build_task_with_all_present(root)
    dataset, report = build_task("T10", root, allow_missing=True, return_report=True)
    assert list(report.unreadable) == ["datasets/KAUH/AudioFiles/BP12_Asthma,E W,P L L,50,F.wav"]
    assert len(table(dataset)) == 233


def build_task_with_all_present(root):
    """Makes every other KAUH file present so that only the corrupt one stands in the way."""
    wav = tiny_wav()
    for path in np.load(root / "feature/kauh_eval/sound_dir_loc_subset.npy").tolist():
        if not (root / path).exists():
            (root / path).write_bytes(wav)
    return build_task("T10", root)


def test_missing_root_and_metadata_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="OPERA root not found"):
        build_task("T7", tmp_path / "nowhere")
    root = tmp_path / "OPERA"
    shutil.copytree(OPERA, root)
    (root / "datasets/icbhi/ICBHI_Challenge_diagnosis.txt").unlink()
    with pytest.raises(OperaDataError, match="lacks datasets/icbhi/ICBHI_Challenge_diagnosis.txt"):
        build_task("T7", root, allow_missing=True)
    shutil.rmtree(root / "feature/kauh_eval")
    with pytest.raises(OperaDataError, match="T10 needs OPERA's committed KAUH split"):
        build_task("T10", root, allow_missing=True)
    with pytest.raises(ValueError, match="Unknown OPERA task 'T42'"):
        build_task("T42", root)


def test_metadata_that_contradicts_the_manifest_is_an_error(tmp_path):
    root = tmp_path / "OPERA"
    shutil.copytree(OPERA, root)
    diagnosis = root / "datasets/icbhi/ICBHI_Challenge_diagnosis.txt"
    diagnosis.write_text(diagnosis.read_text().replace("102\tHealthy", "102\tCOPD"))
    with pytest.raises(OperaDataError, match=r"does not reproduce OPERA's committed manifest.*102_1b1_Ar_sc_Meditron"):
        build_task("T7", root, allow_missing=True)


def test_without_manifests_icbhi_and_respiratory_tr_follow_the_metadata(placeholder_checkout, tmp_path):
    root = tmp_path / "OPERA"
    shutil.copytree(placeholder_checkout / "datasets", root / "datasets")
    for task_id in ("T7", "T11"):
        expected = EXPECTED[task_id](placeholder_checkout)
        built = table(build_task(task_id, root))
        assert built.keys() == expected.keys()
        assert {p: label for p, (label, _) in built.items()} == {p: label for p, (label, _) in expected.items()}
        test_split = {p for p, (_, split) in expected.items() if split == "test"}
        assert {p for p, (_, split) in built.items() if split == "test"} == test_split


def test_uk_covid_labels_come_from_participant_metadata(placeholder_checkout, tmp_path):
    root = tmp_path / "OPERA"
    shutil.copytree(placeholder_checkout / "datasets" / "covidUK", root / "datasets" / "covidUK")
    shutil.copytree(placeholder_checkout / "feature" / "coviduk_eval", root / "feature" / "coviduk_eval")
    paths, labels = manifest(root, *get_task("T1").manifest[:2])
    results = {0: "Negative", 1: "Positive"}
    audio_rows = ["participant_identifier,exhalation_file_name,cough_file_name"]
    participant_rows = ["participant_identifier,covid_test_result"]
    for index, (path, label) in enumerate(zip(paths, labels)):
        audio_rows.append(f"P{index},{Path(path).name},unused_{index}.wav")
        participant_rows.append(f"P{index},{results[label]}")
    (root / "datasets/covidUK/audio_metadata.csv").write_text("\n".join(audio_rows))
    (root / "datasets/covidUK/participant_metadata.csv").write_text("\n".join(participant_rows))
    dataset, report = build_task("T1", root, return_report=True)
    assert report.notes == []
    assert table(dataset) == EXPECTED["T1"](root)
    participants = root / "datasets/covidUK/participant_metadata.csv"
    flipped = "Positive" if labels[0] == 0 else "Negative"
    participants.write_text("\n".join([participant_rows[0], f"P0,{flipped}", *participant_rows[2:]]))
    with pytest.raises(OperaDataError, match="does not reproduce OPERA's committed manifest"):
        build_task("T1", root)


def write_files(root, paths, seconds=0.05):
    wav = tiny_wav(seconds)
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(wav)


def test_covid19_sounds_rule_downsamples_training_rows(tmp_path):
    root = tmp_path / "OPERA"
    lines = ["Uid;Folder Name;Cough filename;Breath filename;split;label"]
    expected = []
    for i in range(30):
        uid = "2020-04-01-abc" if i % 7 == 0 else f"user{i}"
        split = "0" if i < 20 else "1" if i < 25 else "2"
        lines.append(f"{uid};f{i};cough_{i}.wav;breath_{i}.wav;{split};{i % 2}")
        folder = "form-app-users" if i % 7 == 0 else uid
        expected.append((f"datasets/covid19-sounds/0426_EN_used_task1/{folder}/f{i}/breath_{i}.wav", i % 2, split))
    (root / "datasets/covid").mkdir(parents=True)
    (root / "datasets/covid/data_0426_en_task1.csv").write_text("\n".join(lines))
    train = [row for row in expected if row[2] == "0"][::5]
    kept = train + [row for row in expected if row[2] != "0"]
    write_files(root, [path for path, _, _ in kept])
    dataset = build_task("T3", root)
    names = {"0": "train", "1": "validation", "2": "test"}
    assert table(dataset) == {path: (label, names[split]) for path, label, split in kept}
    assert dataset["train"]["path"] == [path for path, _, _ in train]
    manifest = root / "feature/covid19sounds_eval/downsampled"  # where OPERA's covid19sounds_processing.py saves it
    manifest.mkdir(parents=True)
    np.save(manifest / "sound_dir_loc_breath.npy", np.array([path for path, _, _ in kept]))
    np.save(manifest / "labels.npy", np.array([label for _, label, _ in kept]))
    np.save(manifest / "data_split.npy", np.array([int(split) for _, _, split in kept]))
    assert table(build_task("T3", root)) == table(dataset)  # agrees with OPERA's committed manifest
    np.save(manifest / "labels.npy", np.array([1 - label for _, label, _ in kept]))
    with pytest.raises(OperaDataError, match="does not reproduce OPERA's committed manifest"):
        build_task("T3", root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OperaDataError, match="T4 needs datasets/covid19-sounds/data_0426_en_task1.csv"):
        build_task("T4", tmp_path / "empty")


def test_ssbpr_rule_excludes_prone_and_splits_60_20_20(tmp_path):
    root = tmp_path / "OPERA"
    paths = [
        f"datasets/SSBPR/{sex}/s{subject}/{subject}-{n}-{position}.wav"
        for sex in ("female", "male")
        for subject in range(4)
        for n in range(3)
        for position in range(6)
    ]
    write_files(root, paths)
    dataset = build_task("T12", root)
    built = table(dataset)
    assert all(not path.endswith("-5.wav") for path in built) and len(built) == 120
    assert all(label == int(path[-5]) for path, (label, _) in built.items())
    sizes = {split: part.num_rows for split, part in dataset.items()}
    assert sizes == {"train": 72, "validation": 24, "test": 24}
    for part in dataset.values():
        assert sorted(set(part["label"])) == [0, 1, 2, 3, 4]  # stratified
    assert table(build_task("T12", root)) == built  # seeded


def test_mmlung_rows_are_leave_one_out_folds(tmp_path):
    from openpyxl import Workbook

    root = tmp_path / "OPERA"
    (root / "datasets/mmlung").mkdir(parents=True)
    (root / "feature/mmlung_eval").mkdir(parents=True)
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["Spirometry_file", "Deep_Breath_file", "O_Single_file"])
    targets = []
    for i in range(5):
        sheet.append(
            [
                f"s{i}.xls",
                f"./Trimmed Data from phone/9_3_deepbreath/{i}_deepbreaths.wav",
                f"./Trimmed Data from phone/5_2_O_single/{i}_vowelo.wav",
            ]
        )
        targets.append([3.0 + i, 2.5 + i, 0.8 + i / 100])
    workbook.save(root / "datasets/mmlung/All_path.xlsx")
    np.save(root / "feature/mmlung_eval/label.npy", np.array(targets))
    write_files(root, [f"datasets/mmlung/Trimmed Data from phone/9_3_deepbreath/{i}_deepbreaths.wav" for i in range(5)])
    write_files(root, [f"datasets/mmlung/Trimmed Data from phone/5_2_O_single/{i}_vowelo.wav" for i in range(5)])
    breath_fev1 = build_task("T14", root)["train"]
    assert breath_fev1["label"] == pytest.approx([2.5, 3.5, 4.5, 5.5, 6.5])
    assert breath_fev1["fold"] == [0, 1, 2, 3, 4] and breath_fev1["path"][2].endswith(
        "9_3_deepbreath/2_deepbreaths.wav"
    )
    vowel_ratio = build_task("T18", root)["train"]
    assert vowel_ratio["label"] == pytest.approx([0.8, 0.81, 0.82, 0.83, 0.84])
    assert vowel_ratio["path"][0].endswith("5_2_O_single/0_vowelo.wav")


def test_nosemic_folds_and_file_name_rule(tmp_path):
    root = tmp_path / "OPERA"
    names = ["4_a_b_12.5.wav", "4_c_d_14.wav", "15_a_b_16.wav", "21_x_y_18.25.wav"]
    write_files(root, [f"datasets/nosemic/audio/{name}" for name in names])
    part = build_task("T19", root)["train"]
    assert part["label"] == pytest.approx([16.0, 18.25, 12.5, 14.0])  # sorted file names
    assert part["fold"] == [None, "21", "4", "4"] and part["subject_id"] == ["15", "21", "4", "4"]
    write_files(root, ["datasets/nosemic/audio/badname.wav"])
    with pytest.raises(OperaDataError, match="badname.wav is not named"):
        build_task("T19", root)


def test_a_train_split_too_small_to_carve_validation_from_is_a_data_error(tmp_path, capsys):
    root = tmp_path / "OPERA"
    shutil.copytree(OPERA, root)
    shutil.rmtree(root / "feature/icbhidisease_eval")  # without OPERA's manifest only the few test recordings remain
    assert cli_main(["opera", "build", "T7", "--opera-root", str(root), "--output", str(tmp_path / "t7")]) == 2
    assert "error: T7: the train split is empty, so no validation set can be carved" in capsys.readouterr().err
    task = get_task("T7")
    one_copd = [{"label": label, "split": "train"} for label in (0, 0, 0, 0, 1)]
    with pytest.raises(OperaDataError, match="T7: the train split has a single COPD row"):
        carve_validation(task, one_copd)
    two_each = [{"label": label, "split": "train"} for label in (0, 0, 1, 1)]
    with pytest.raises(OperaDataError, match="T7: cannot carve OPERA's validation set .*number of classes = 2"):
        carve_validation(task, two_each)


def test_allow_missing_counts_what_it_leaves_out_per_split(placeholder_checkout, tmp_path):
    root = tmp_path / "OPERA"
    shutil.copytree(placeholder_checkout, root)
    paths, _, splits = manifest(root, *get_task("T10").manifest)
    gone = [path for path, split in zip(paths, splits) if split != "train"][:2]
    for path in gone:
        (root / path).unlink()
    _, report = build_task("T10", root, allow_missing=True, return_report=True)
    assert report.missing == gone and report.left_out == {"test": 2}
    assert report.left_out_note() == f"T10: left out 2 of {len(paths)} recordings, missing or unreadable (test 2)."
    _, complete = build_task("T10", placeholder_checkout, return_report=True)
    assert complete.left_out == {} and complete.left_out_note() is None


def test_registry_describes_all_19_tasks():
    assert list(TASKS) == [f"T{i}" for i in range(1, 20)]
    for task in TASKS.values():
        assert task.metric.startswith("MAE" if task.task_type == "regression" else "AUROC")
        assert task.license and task.download and task.split_protocol and task.validation
        assert (task.num_labels == 1) == (task.task_type == "regression")
    assert get_task("icbhi_copd") is get_task("t7") is TASKS["T7"]


def test_registry_describes_the_mmlung_protocol_opera_runs():
    for task_id in ("T13", "T18"):
        validation = TASKS[task_id].validation
        assert "11% of the training rows of each fold" in validation and "LinearRegression" not in validation


def test_cli_list_shows_buildable_tasks(capsys):
    assert cli_main(["opera", "list", "--opera-root", str(OPERA)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("T")}
    assert len(lines) == 19
    assert "partial (7/828 files)" in lines["T7"] and "partial (9/234 files)" in lines["T10"]
    assert "no audio (0/504 files)" in lines["T11"] and "no: " in lines["T3"]


def test_cli_list_of_a_missing_root_is_one_error(tmp_path, capsys):
    assert cli_main(["opera", "list", "--opera-root", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"error: OPERA root not found: {tmp_path / 'nowhere'}" in captured.err


def test_push_warns_before_uploading_restricted_datasets(tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(DatasetDict, "push_to_hub", lambda self, repo_id, **kwargs: pushed.append((repo_id, kwargs)))
    root = tmp_path / "OPERA"
    write_files(root, [f"datasets/SSBPR/male/s0/0-{n}-{p}.wav" for n in range(5) for p in range(5)])
    assert cli_main(["opera", "build", "T12", "--opera-root", str(root), "--output", str(tmp_path / "t12")]) == 0
    assert cli_main(["opera", "push", str(tmp_path / "t12"), "me/ssbpr"]) == 2
    assert pushed == []
    assert cli_main(["opera", "push", str(tmp_path / "t12"), "me/ssbpr", "--confirm-license"]) == 0
    assert pushed == [("me/ssbpr", {"private": True})]
    assert (
        cli_main(
            ["opera", "build", "T10", "--opera-root", str(OPERA), "--output", str(tmp_path / "t10"), "--allow-missing"]
        )
        == 0
    )
    assert cli_main(["opera", "push", str(tmp_path / "t10"), "me/kauh"]) == 0
    assert pushed[-1] == ("me/kauh", {"private": False})
