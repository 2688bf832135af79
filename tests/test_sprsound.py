import json
import re
import shutil

import numpy as np
import pytest
import soundfile
import soxr

from resp_hf.tasks.segments import decode_segments
from resp_hf.tasks.sprsound import SprsoundDataError, build_sprsound

RATE = 8000
# (folder set, file stem, record annotation, [(start ms, end ms, type)]) in the published JSON schema.
RECORDINGS = [
    ("train", "10000001_3.4_1_p1_101", "Normal", [(100, 900, "Normal"), (1000, 1800, "Normal")]),
    ("train", "10000001_3.4_1_p2_102", "DAS", [(200, 1200, "Fine Crackle"), (1300, 2000, "Normal")]),
    ("train", "10000002_0.8_0_p3_103", "CAS", [(0, 700, "Wheeze"), (800, 1500, "Rhonchi"), (1600, 2900, "Stridor")]),
    ("train", "10000003_12.1_0_p4_104", "CAS & DAS", [(300, 1400, "Wheeze+Crackle"), (1500, 2500, "Coarse Crackle")]),
    ("train", "10000004_5.0_1_p1_105", "Poor Quality", []),
    ("inter", "20000001_4.4_1_p2_201", "CAS", [(100, 1100, "Wheeze"), (1200, 2200, "Normal")]),
    ("intra", "10000002_0.8_0_p1_202", "Normal", [(500, 1500, "Normal")]),
    ("2023", "30000001_2.0_0_p4_301", "Poor Quality", []),
]
FOLDERS = {
    "train": ("BioCAS2022/train2022_json", "BioCAS2022/train2022_wav"),
    "inter": ("BioCAS2022/test2022_json/inter_test_json", "BioCAS2022/test2022_wav"),
    "intra": ("BioCAS2022/test2022_json/intra_test_json", "BioCAS2022/test2022_wav"),
    "2023": ("BioCAS2023/test2023_json", "BioCAS2023/test2023_wav"),
}
SPLITS = {"train": "train", "inter": "inter_test_2022", "intra": "intra_test_2022", "2023": "test_2023"}


def write_release(root):
    for index, (folder, stem, record, events) in enumerate(RECORDINGS):
        json_dir, wav_dir = (root / name for name in FOLDERS[folder])
        json_dir.mkdir(parents=True, exist_ok=True)
        wav_dir.mkdir(parents=True, exist_ok=True)
        audio = 0.1 * np.random.default_rng(index).standard_normal(3 * RATE)
        soundfile.write(wav_dir / f"{stem}.wav", audio, RATE, subtype="PCM_16")
        annotation = {
            "record_annotation": record,
            "event_annotation": [{"start": str(a), "end": str(b), "type": kind} for a, b, kind in events],
        }
        (json_dir / f"{stem}.json").write_text(json.dumps(annotation))
    return root


@pytest.fixture
def release(tmp_path):
    return write_release(tmp_path / "SPRSound")


def rows_by_key(dataset):
    found = {}
    for split, part in dataset.items():
        names = part.features["label"].names
        for row in part:
            key = (row["recording"], row["event"])
            assert key not in found
            found[key] = (split, row["start"], row["end"], names[row["label"]])
    return found


def test_event_tasks_have_every_event_once_with_its_label_and_times(release):
    binary, report = build_sprsound(release, "event_binary", validation_fraction=0)
    expected = {
        (stem, index): (SPLITS[folder], a / 1000, b / 1000, "Normal" if kind == "Normal" else "Adventitious")
        for folder, stem, _, events in RECORDINGS
        for index, (a, b, kind) in enumerate(events)
    }
    assert rows_by_key(binary) == expected
    assert list(binary) == ["train", "inter_test_2022", "intra_test_2022"]  # the 2023 record has no events
    assert report.counts["train"] == {"Normal": 3, "Adventitious": 6}
    multi, _ = build_sprsound(release, "event_multiclass", validation_fraction=0)
    assert {key: value[3] for key, value in rows_by_key(multi).items()} == {
        (stem, index): kind for _, stem, _, events in RECORDINGS for index, (_, _, kind) in enumerate(events)
    }
    assert multi["train"].features["label"].names[0] == "Normal"


def test_record_tasks_have_one_row_per_recording(release):
    ternary, report = build_sprsound(release, "record_ternary", validation_fraction=0)
    multi, _ = build_sprsound(release, "record_multiclass", validation_fraction=0)
    adventitious = {"CAS", "DAS", "CAS & DAS"}
    assert rows_by_key(ternary) == {
        (stem, -1): (SPLITS[folder], 0.0, 3.0, "Adventitious" if record in adventitious else record)
        for folder, stem, record, _ in RECORDINGS
    }
    assert {key: value[3] for key, value in rows_by_key(multi).items()} == {
        (stem, -1): record for _, stem, record, _ in RECORDINGS
    }
    assert multi["train"].features["label"].names == ["Normal", "Poor Quality", "CAS", "DAS", "CAS & DAS"]
    assert report.counts["test_2023"] == {"Normal": 0, "Poor Quality": 1, "Adventitious": 0}
    row = ternary["train"][0]
    assert (row["patient"], row["age"], row["gender"], row["location"]) == ("10000001", 3.4, "female", "p1")


def test_validation_is_patient_disjoint_and_seeded(release):
    dataset, report = build_sprsound(release, "event_binary", validation_fraction=0.3, seed=5)
    train, validation = set(dataset["train"]["patient"]), set(dataset["validation"]["patient"])
    assert validation and train and not train & validation
    assert train | validation == {"10000001", "10000002", "10000003"}  # 10000004 has no events
    assert sorted(validation) == report.validation_patients
    again, _ = build_sprsound(release, "event_binary", validation_fraction=0.3, seed=5)
    assert again["validation"]["recording"] == dataset["validation"]["recording"]


def test_event_audio_is_the_slice_of_the_recording_at_16k(release):
    dataset, _ = build_sprsound(release, "event_multiclass", validation_fraction=0)
    part = dataset["train"].filter(lambda row: row["recording"] == "10000002_0.8_0_p3_103")
    audio, rate = soundfile.read(part[0]["path"], dtype="float32")
    whole = soxr.resample(audio, rate, 16000, quality="HQ").astype(np.float32)
    for row, item in zip(part, decode_segments(part)):
        np.testing.assert_array_equal(
            item["audio"]["array"], whole[int(row["start"] * 16000) : int(row["end"] * 16000)]
        )


def test_bad_annotations_are_errors_naming_the_file(release):
    path = release / FOLDERS["train"][0] / "10000001_3.4_1_p1_101.json"
    path.write_text(
        json.dumps({"record_annotation": "Normal", "event_annotation": [{"start": "1", "end": "2", "type": "Squawk"}]})
    )
    with pytest.raises(SprsoundDataError, match=r"10000001_3.4_1_p1_101.json: unknown event type\(s\) \['Squawk'\]"):
        build_sprsound(release, validation_fraction=0)
    path.write_text(
        json.dumps(
            {"record_annotation": "Normal", "event_annotation": [{"start": "900", "end": "900", "type": "Normal"}]}
        )
    )
    with pytest.raises(SprsoundDataError, match="10000001_3.4_1_p1_101.json event 0"):
        build_sprsound(release, validation_fraction=0)
    _, report = build_sprsound(release, validation_fraction=0, skip_invalid=True)
    assert report.skipped == ["10000001_3.4_1_p1_101.json event 0: zero or negative length (0.9 to 0.9 s)"]
    (release / FOLDERS["train"][1] / "10000001_3.4_1_p2_102.wav").unlink()
    with pytest.raises(FileNotFoundError, match="No audio for .*10000001_3.4_1_p2_102.json"):
        build_sprsound(release, validation_fraction=0)
    with pytest.raises(ValueError, match="Unknown SPRSound task"):
        build_sprsound(release, "task_3")


def event_json(start, end, kind='"Normal"'):
    """An annotation with one event whose fields are written as given (JSON text)."""
    event = f'{{"start": {start}, "end": {end}, "type": {kind}}}'
    return f'{{"record_annotation": "Normal", "event_annotation": [{event}]}}'


@pytest.mark.parametrize(
    "content, message",
    [
        (event_json('"100"', '"900"', '["Normal"]'), r"type \['Normal'\] is not a string"),
        ('{"event_annotation": ' + "[" * 200_000 + "]" * 200_000 + "}", "maximum recursion depth"),
        (event_json('"1 s"', '"900"'), "could not convert string to float: '1 s'"),
        (event_json("NaN", "900"), "NaN is not a JSON value"),
    ],
    ids=["type-list", "deep", "not-a-number", "nan-literal"],
)
def test_malformed_event_annotations_are_errors_naming_the_file(release, content, message):
    path = release / FOLDERS["train"][0] / "10000001_3.4_1_p1_101.json"
    path.write_text(content)
    with pytest.raises(SprsoundDataError, match=rf"10000001_3.4_1_p1_101.json: expected .*{message}"):
        build_sprsound(release, validation_fraction=0)


@pytest.mark.parametrize(
    "start, end, problem",
    [
        ('"nan"', '"900"', r"times must be finite and non-negative \(nan to 0.9 s\)"),
        ('"100"', '"inf"', r"times must be finite and non-negative \(0.1 to inf s\)"),
        ("100", "1e400", r"times must be finite and non-negative \(0.1 to inf s\)"),
        ('"-100"', '"900"', r"times must be finite and non-negative \(-0.1 to 0.9 s\)"),
        ("900", "100", r"zero or negative length \(0.9 to 0.1 s\)"),
        ("3000", "3500", r"starts at 3.0 s, after the end of the file \(3.000 s\)"),
    ],
    ids=["nan", "inf", "overflow", "negative", "reversed", "after-the-end"],
)
def test_events_with_unreadable_times_are_named_and_left_out_only_when_asked(release, start, end, problem):
    """The same rule as for ICBHI cycles (`segment_problem`): an error naming the event, or left out and listed."""
    (release / FOLDERS["train"][0] / "10000001_3.4_1_p1_101.json").write_text(event_json(start, end))
    with pytest.raises(
        SprsoundDataError, match=rf"^1 event\(s\) cannot be read: 10000001_3.4_1_p1_101.json event 0: {problem}\. "
    ):
        build_sprsound(release, validation_fraction=0)
    dataset, report = build_sprsound(release, validation_fraction=0, skip_invalid=True)
    assert len(report.skipped) == 1 and re.fullmatch(
        rf"10000001_3.4_1_p1_101.json event 0: {problem}", report.skipped[0]
    )
    assert "10000001_3.4_1_p1_101" not in dataset["train"]["recording"]


def test_events_past_the_end_of_their_file_are_kept_clipped_and_reported(release):
    (release / FOLDERS["train"][0] / "10000001_3.4_1_p1_101.json").write_text(event_json("2500", "4000"))
    dataset, report = build_sprsound(release, validation_fraction=0)
    assert report.clipped == ["10000001_3.4_1_p1_101.json event 0: ends at 4.0 s, the file at 3.000 s"]
    assert "clipped at the end of the file: 10000001_3.4_1_p1_101.json event 0" in str(report)
    row = dataset["train"].filter(lambda row: row["recording"] == "10000001_3.4_1_p1_101")[0]
    assert (row["start"], row["end"]) == (2.5, 4.0)
    audio = decode_segments(dataset["train"].select([dataset["train"]["recording"].index(row["recording"])]))[0]
    assert len(audio["audio"]["array"]) == 8000  # 0.5 s to the end of the 3-s file at 16 kHz


def test_an_age_that_is_not_a_finite_number_is_an_error_naming_the_file(release):
    json_dir, wav_dir = (release / name for name in FOLDERS["train"])
    for folder, suffix in ((json_dir, ".json"), (wav_dir, ".wav")):
        (folder / f"10000001_3.4_1_p1_101{suffix}").rename(folder / f"10000001_nan_1_p1_101{suffix}")
    with pytest.raises(SprsoundDataError, match="10000001_nan_1_p1_101.json: not a SPRSound name"):
        build_sprsound(release, validation_fraction=0)


def test_a_folder_in_place_of_an_annotation_or_unreadable_audio_is_an_error_naming_it(release):
    json_dir, wav_dir = (release / name for name in FOLDERS["train"])
    annotation, audio = json_dir / "10000001_3.4_1_p1_101.json", wav_dir / "10000001_3.4_1_p1_101.wav"
    annotation.unlink()
    annotation.mkdir()
    with pytest.raises(SprsoundDataError, match=f"{annotation} is a folder where a text file is expected"):
        build_sprsound(release, validation_fraction=0)
    annotation.rmdir()
    write_release(release)
    audio.write_bytes(b"not audio" * 100)
    with pytest.raises(ValueError, match=f"Could not read {audio}"):
        build_sprsound(release, validation_fraction=0)


def test_a_recording_in_two_official_splits_is_an_error_naming_both_annotations(release):
    stem = "10000001_3.4_1_p1_101"
    for source, target, suffix in zip(FOLDERS["train"], FOLDERS["inter"], (".json", ".wav")):
        shutil.copy(release / source / f"{stem}{suffix}", release / target / f"{stem}{suffix}")
    train_json = release / FOLDERS["train"][0] / f"{stem}.json"
    inter_json = release / FOLDERS["inter"][0] / f"{stem}.json"
    with pytest.raises(
        SprsoundDataError, match=rf"^{train_json} \(train\) and {inter_json} \(inter_test_2022\) annotate the same"
    ):
        build_sprsound(release, validation_fraction=0)


def test_a_repeated_event_is_named_and_left_out_only_when_asked(release):
    path = release / FOLDERS["train"][0] / "10000001_3.4_1_p1_101.json"
    content = json.loads(path.read_text())
    content["event_annotation"].append(content["event_annotation"][0])
    path.write_text(json.dumps(content))
    with pytest.raises(
        SprsoundDataError, match=r"10000001_3.4_1_p1_101.json event 2: repeats event 0 \(0.1 to 0.9 s\)"
    ):
        build_sprsound(release, validation_fraction=0)
    dataset, report = build_sprsound(release, validation_fraction=0, skip_invalid=True)
    assert report.skipped == ["10000001_3.4_1_p1_101.json event 2: repeats event 0 (0.1 to 0.9 s)"]
    assert rows_by_key(dataset)[("10000001_3.4_1_p1_101", 0)][1:3] == (0.1, 0.9)


def test_audio_without_its_annotation_is_an_error_naming_it(release):
    (release / FOLDERS["train"][0] / "10000003_12.1_0_p4_104.json").unlink()
    wav_folder = release / FOLDERS["train"][1]
    with pytest.raises(SprsoundDataError, match=rf"^1 recording\(s\) in {wav_folder} have no annotation.*_p4_104.wav"):
        build_sprsound(release, validation_fraction=0)


@pytest.mark.parametrize("value", ["true", "false"])
def test_an_event_time_that_is_not_a_number_is_an_error_naming_the_file(release, value):
    (release / FOLDERS["train"][0] / "10000001_3.4_1_p1_101.json").write_text(event_json(value, '"900"'))
    with pytest.raises(SprsoundDataError, match=r"10000001_3.4_1_p1_101.json: expected .* is not a number\)"):
        build_sprsound(release, validation_fraction=0)


def test_copies_of_the_release_are_read_once_and_differing_folders_are_an_error(release):
    expected, _ = build_sprsound(release, validation_fraction=0)
    shutil.copytree(release / "BioCAS2022", release / "releases" / "BioCAS2022")  # as the official repository
    copied, _ = build_sprsound(release, validation_fraction=0)
    assert {name: split["path"] for name, split in copied.items()} == {
        name: split["path"] for name, split in expected.items()
    }
    next((release / "releases" / FOLDERS["train"][0]).glob("*.json")).unlink()
    with pytest.raises(
        SprsoundDataError, match=r"2 different folders under .* could hold the train split: .*train2022_json.*releases"
    ):
        build_sprsound(release, validation_fraction=0)


@pytest.mark.parametrize("task", ["record_multiclass", "event_binary"])
def test_truncated_or_stereo_audio_is_an_error_naming_it(release, task):
    audio = release / FOLDERS["train"][1] / "10000001_3.4_1_p1_101.wav"
    data = audio.read_bytes()
    audio.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"^{audio} is truncated"):
        build_sprsound(release, task, validation_fraction=0)
    samples = 0.1 * np.random.default_rng(0).standard_normal((3 * RATE, 2))
    soundfile.write(audio, samples, RATE, subtype="PCM_16")
    with pytest.raises(ValueError, match=f"^{audio} has 2 channels, but the SPRSound recordings are mono"):
        build_sprsound(release, task, validation_fraction=0)
