import math
import shutil

import numpy as np
import pytest
import soundfile
import soxr
from conftest import OPERA
from datasets.utils import _dill as datasets_dill

from resp_hf.audio import decode_audio
from resp_hf.tasks.icbhi import (
    OFFICIAL_COUNTS,
    IcbhiDataError,
    IcbhiReport,
    build_icbhi_cycles,
    check_official_counts,
)
from resp_hf.tasks.segments import SegmentWindow, decode_segments, fit_segment

ICBHI = OPERA / "datasets" / "icbhi"
DATABASE = ICBHI / "ICBHI_final_database"
LABEL_NAMES = {(0, 0): "normal", (1, 0): "crackle", (0, 1): "wheeze", (1, 1): "both"}


def annotations():
    """{recording: [(start, end, crackles, wheezes)]} read straight from the shared annotation files."""
    cycles = {}
    for path in sorted(DATABASE.glob("*.txt")):
        rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
        cycles[path.stem] = [(float(a), float(b), int(c), int(d)) for a, b, c, d in rows]
    return cycles


def official_split():
    return dict(line.split("\t") for line in (ICBHI / "ICBHI_challenge_train_test.txt").read_text().split("\n") if line)


@pytest.fixture(scope="module")
def official_build():
    return build_icbhi_cycles(ICBHI, validation_fraction=0)


def test_every_cycle_appears_once_with_its_label_split_and_times(official_build):
    dataset, report = official_build
    splits = official_split()
    expected = {
        (recording, index): (start, end, LABEL_NAMES[crackles, wheezes], splits[recording])
        for recording, cycles in annotations().items()
        for index, (start, end, crackles, wheezes) in enumerate(cycles)
    }
    built = {}
    for split_name, split in dataset.items():
        names = split.features["label"].names
        for row in split:
            key = (row["recording"], row["cycle"])
            assert key not in built, f"{key} appears twice"
            built[key] = (row["start"], row["end"], names[row["label"]], split_name)
            assert row["label_2class"] == int(names[row["label"]] != "normal")
            assert row["patient"] == row["recording"][:3] and row["device"] == row["recording"].split("_")[-1]
    assert built == expected
    assert len(built) == 97 and report.recordings == 10


def test_counts_per_label_and_split(official_build):
    _, report = official_build
    assert report.counts == {
        "train": {"normal": 2, "crackle": 0, "wheeze": 4, "both": 0},
        "test": {"normal": 80, "crackle": 1, "wheeze": 10, "both": 0},
    }
    assert "train: 6 cycles" in str(report) and "test: 91 cycles" in str(report)
    first_line = "ICBHI cycles: 10 recordings of the split file's 921 (a partial copy: the others are not on disk)"
    assert str(report).splitlines()[0] == first_line
    # The full database has 920 of the official split file's 921 recordings (one has no .wav): not a partial copy.
    assert str(IcbhiReport(recordings=920, listed=921)).splitlines()[0] == "ICBHI cycles: 920 recordings"
    assert check_official_counts(report) is False  # 10 of 920 recordings: nothing to compare


def recording_at_16k(recording):
    audio, rate = soundfile.read(DATABASE / f"{recording}.wav", dtype="float32")
    return soxr.resample(audio, rate, 16000, quality="HQ").astype(np.float32)


@pytest.mark.parametrize("recording", ["101_1b1_Al_sc_Meditron", "104_1b1_Ar_sc_Litt3200"])  # 44.1 kHz and 4 kHz
def test_segment_audio_is_the_slice_of_the_resampled_recording(official_build, recording):
    dataset, _ = official_build
    whole = recording_at_16k(recording)
    rows = dataset["test"].filter(lambda row: row["recording"] == recording)
    decoded = decode_segments(rows)
    for row, item in zip(rows, decoded):
        expected = whole[int(row["start"] * 16000) : min(int(row["end"] * 16000), len(whole))]
        np.testing.assert_array_equal(item["audio"]["array"], expected)
        assert item["audio"]["sampling_rate"] == 16000


def test_decoded_segments_are_fingerprinted_by_their_settings_not_by_walking_the_decoder(official_build):
    rows = official_build[0]["train"]
    first, again = decode_segments(rows, window=SegmentWindow()), decode_segments(rows, window=SegmentWindow())
    assert first._fingerprint == again._fingerprint != decode_segments(rows, window=SegmentWindow(4.0))._fingerprint
    transform = first.format["format_kwargs"]["transform"]
    assert len(datasets_dill.dumps(transform)) < 500  # pickled by reference: no code, no globals of decode_audio


def recipe_cut_pad(audio, rate, seconds, pad):
    """Patch-Mix util/icbhi_util.py cut_pad_sample_torchaudio, transcribed to numpy."""
    target = seconds * rate
    if audio.shape[-1] > target:
        return audio[:target]
    if pad == "zero":
        out = np.zeros(target, dtype=np.float32)
        diff = target - audio.shape[-1]
        out[diff // 2 : audio.shape[-1] + diff // 2] = audio
        return out
    ratio = math.ceil(target / audio.shape[-1])
    out = np.concatenate([audio] * ratio)[:target]
    fade_len = int(rate / 16)
    fade = 1.0 - np.linspace(0.0, 1.0, fade_len, dtype=np.float32)  # torchaudio Fade, linear fade-out
    return np.concatenate([out[: target - fade_len], out[target - fade_len :] * fade])


@pytest.mark.parametrize("pad", ["repeat", "zero"])
@pytest.mark.parametrize("seconds", [2, 8])
def test_fixed_length_window_follows_the_recipe(pad, seconds):
    cycle = {"path": DATABASE / "102_1b1_Ar_sc_Meditron.wav", "start": 0.2, "end": 3.1}  # cropped at 2 s, padded at 8 s
    segment = decode_audio(cycle, 16000, downmix=True)
    fitted = fit_segment(segment, 16000, SegmentWindow(seconds=seconds, pad=pad))
    np.testing.assert_allclose(fitted, recipe_cut_pad(segment, 16000, seconds, pad), rtol=0, atol=1e-7)
    assert fitted.shape == (seconds * 16000,)


def write_fixture_split(tmp_path, train_patients):
    """A split file over the shared recordings with `train_patients` in train (the official one has one)."""
    lines = [f"{name}\t{'train' if name[:3] in train_patients else 'test'}" for name in official_split()]
    path = tmp_path / "split.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validation_is_a_seeded_patient_disjoint_carve_out_of_train(tmp_path):
    split_file = write_fixture_split(tmp_path, {"101", "102", "103"})
    dataset, report = build_icbhi_cycles(ICBHI, split_file=split_file, validation_fraction=0.3, seed=3)
    train, validation = set(dataset["train"]["patient"]), set(dataset["validation"]["patient"])
    assert train and validation and not train & validation
    assert train | validation == {"101", "102", "103"}
    assert set(dataset["test"]["patient"]) == {"104"}
    assert sorted(validation) == report.validation_patients
    again, _ = build_icbhi_cycles(ICBHI, split_file=split_file, validation_fraction=0.3, seed=3)
    assert again["validation"]["recording"] == dataset["validation"]["recording"]
    total = sum(len(split) for split in dataset.values())
    assert total == 97


def test_validation_needs_two_training_patients():
    with pytest.raises(ValueError, match="ICBHI training split has 1 patient"):
        build_icbhi_cycles(ICBHI)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\), got 1.5"):
        build_icbhi_cycles(ICBHI, validation_fraction=1.5)


def copy_database(tmp_path, recordings):
    folder = tmp_path / "ICBHI_final_database"
    folder.mkdir()
    for name in recordings:
        for suffix in (".wav", ".txt"):
            shutil.copy(DATABASE / f"{name}{suffix}", folder / f"{name}{suffix}")
    shutil.copy(ICBHI / "ICBHI_challenge_train_test.txt", tmp_path)
    return folder


def test_unreadable_cycles_are_named_and_never_dropped_silently(tmp_path):
    folder = copy_database(tmp_path, ["101_1b1_Al_sc_Meditron", "103_2b2_Ar_mc_LittC2SE"])
    annotation = folder / "101_1b1_Al_sc_Meditron.txt"  # a 20 s recording
    annotation.write_text(annotation.read_text() + "5.0\t5.0\t0\t0\n21.0\t22.0\t1\t0\n19.5\t20.7\t0\t1\n")
    with pytest.raises(IcbhiDataError, match=r"2 cycle\(s\).*101_1b1_Al_sc_Meditron cycle 12: zero.*cycle 13: starts"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)
    dataset, report = build_icbhi_cycles(tmp_path, validation_fraction=0, skip_invalid=True)
    assert [item.split(":")[0] for item in report.skipped] == [
        "101_1b1_Al_sc_Meditron cycle 12",
        "101_1b1_Al_sc_Meditron cycle 13",
    ]
    assert report.clipped == ["101_1b1_Al_sc_Meditron cycle 14: ends at 20.7 s, the file at 20.000 s"]
    last = dataset["test"].filter(lambda row: row["cycle"] == 14)
    assert len(last) == 1 and len(decode_segments(last)[0]["audio"]["array"]) == 8000  # 19.5 s to the end


def test_recordings_missing_from_the_split_file_or_malformed_files_are_errors(tmp_path):
    folder = copy_database(tmp_path, ["101_1b1_Al_sc_Meditron"])
    shutil.copy(DATABASE / "101_1b1_Al_sc_Meditron.wav", folder / "999_1b1_Al_sc_Meditron.wav")
    with pytest.raises(IcbhiDataError, match="not in the split file"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)
    (folder / "999_1b1_Al_sc_Meditron.wav").unlink()
    (folder / "101_1b1_Al_sc_Meditron.txt").write_text("0.1\t0.5\tyes\t0\n")
    with pytest.raises(IcbhiDataError, match=r"101_1b1_Al_sc_Meditron.txt line 1"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)


def test_official_count_check_compares_full_builds():
    report = IcbhiReport(recordings=920)
    report.counts = {
        "train": {"normal": 2063, "crackle": 1215, "wheeze": 501, "both": 363},
        "test": {"normal": 1579, "crackle": 649, "wheeze": 385, "both": 143},
    }
    assert check_official_counts(report) is True
    report.counts["test"]["both"] = 142
    with pytest.raises(IcbhiDataError, match="cycles: 6897 built, 6898 official; both: 505 built, 506 official"):
        check_official_counts(report)
    assert OFFICIAL_COUNTS["train"] + OFFICIAL_COUNTS["test"] == OFFICIAL_COUNTS["cycles"]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
@pytest.mark.parametrize("damaged", ["101_1b1_Al_sc_Meditron.txt", "ICBHI_challenge_train_test.txt"])
def test_annotation_or_split_file_that_is_not_utf8_is_an_error_naming_it(tmp_path, encoding, damaged):
    folder = copy_database(tmp_path, ["101_1b1_Al_sc_Meditron"])
    path = next(candidate for candidate in (folder / damaged, tmp_path / damaged) if candidate.is_file())
    path.write_text(path.read_text() + "café\n", encoding=encoding)
    with pytest.raises(IcbhiDataError, match=f"{path} is not UTF-8 text"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)


@pytest.mark.parametrize("times", ["nan\t1.0", "0.5\tinf", "0.5\t1e400", "-1.0\t1.0"])
def test_cycle_times_that_are_not_finite_and_non_negative_are_bad_cycles(tmp_path, times):
    folder = copy_database(tmp_path, ["101_1b1_Al_sc_Meditron"])
    annotation = folder / "101_1b1_Al_sc_Meditron.txt"
    annotation.write_text(annotation.read_text() + f"{times}\t0\t0\n")
    with pytest.raises(IcbhiDataError, match="101_1b1_Al_sc_Meditron cycle 12: times must be finite and non-negative"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)
    _, report = build_icbhi_cycles(tmp_path, validation_fraction=0, skip_invalid=True)
    assert [item.split(":")[0] for item in report.skipped] == ["101_1b1_Al_sc_Meditron cycle 12"]


def test_unreadable_audio_is_an_error_naming_the_file(tmp_path):
    folder = copy_database(tmp_path, ["101_1b1_Al_sc_Meditron"])
    (folder / "101_1b1_Al_sc_Meditron.wav").write_bytes(b"not audio" * 100)
    with pytest.raises(ValueError, match=f"Could not read {folder / '101_1b1_Al_sc_Meditron.wav'}"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)


def test_an_empty_annotation_file_is_an_error_naming_it(tmp_path):
    folder = copy_database(tmp_path, ["101_1b1_Al_sc_Meditron", "103_2b2_Ar_mc_LittC2SE"])
    (folder / "103_2b2_Ar_mc_LittC2SE.txt").write_text("\n")
    with pytest.raises(IcbhiDataError, match=f"^{folder / '103_2b2_Ar_mc_LittC2SE.txt'} holds no cycles"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)


def test_a_recording_without_its_audio_or_annotation_is_an_error_and_wav_in_capitals_is_read(tmp_path):
    folder = copy_database(tmp_path, ["101_1b1_Al_sc_Meditron", "103_2b2_Ar_mc_LittC2SE"])
    (folder / "103_2b2_Ar_mc_LittC2SE.wav").rename(folder / "103_2b2_Ar_mc_LittC2SE.WAV")
    dataset, report = build_icbhi_cycles(tmp_path, validation_fraction=0)
    assert report.recordings == 2 and len(dataset["train"]) == 6
    assert dataset["train"][0]["path"] == str(folder / "103_2b2_Ar_mc_LittC2SE.WAV")
    (folder / "103_2b2_Ar_mc_LittC2SE.WAV").unlink()
    with pytest.raises(IcbhiDataError, match=f"{folder} lacks 1 file\\(s\\), 103_2b2_Ar_mc_LittC2SE.wav\\.$"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)
    (folder / "101_1b1_Al_sc_Meditron.txt").unlink()
    with pytest.raises(IcbhiDataError, match=r"lacks 2 file\(s\), 101_1b1_Al_sc_Meditron.txt, 103_2b2"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)


def test_a_repeated_annotation_line_is_a_bad_cycle_named_and_left_out_only_when_asked(tmp_path):
    folder = copy_database(tmp_path, ["103_2b2_Ar_mc_LittC2SE"])
    annotation = folder / "103_2b2_Ar_mc_LittC2SE.txt"
    first = annotation.read_text().splitlines()[0]
    annotation.write_text(annotation.read_text() + first + "\n")
    with pytest.raises(IcbhiDataError, match=r"1 cycle\(s\).*103_2b2_Ar_mc_LittC2SE cycle 6: repeats cycle 0"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)
    dataset, report = build_icbhi_cycles(tmp_path, validation_fraction=0, skip_invalid=True)
    assert dataset["train"]["cycle"] == [0, 1, 2, 3, 4, 5]
    assert [item.split(":")[0] for item in report.skipped] == ["103_2b2_Ar_mc_LittC2SE cycle 6"]


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_a_truncated_recording_is_named_as_truncated_not_blamed_on_its_cycles(tmp_path, skip_invalid):
    folder = copy_database(tmp_path, ["103_2b2_Ar_mc_LittC2SE"])
    audio = folder / "103_2b2_Ar_mc_LittC2SE.wav"
    audio.write_bytes(audio.read_bytes()[: audio.stat().st_size * 2 // 5])
    with pytest.raises(ValueError, match=f"^{audio} is truncated: its header promises"):
        build_icbhi_cycles(tmp_path, validation_fraction=0, skip_invalid=skip_invalid)


def test_a_stereo_recording_is_an_error_naming_it(tmp_path):
    folder = copy_database(tmp_path, ["103_2b2_Ar_mc_LittC2SE"])
    audio = folder / "103_2b2_Ar_mc_LittC2SE.wav"
    samples, rate = soundfile.read(audio)
    soundfile.write(audio, np.stack([samples, samples], axis=1), rate, subtype="PCM_16")
    with pytest.raises(ValueError, match=f"^{audio} has 2 channels, but the ICBHI recordings are mono"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)


def test_a_split_file_with_a_byte_order_mark_is_read_and_named_in_errors(tmp_path):
    copy_database(tmp_path, ["103_2b2_Ar_mc_LittC2SE"])
    split_file = tmp_path / "ICBHI_challenge_train_test.txt"
    split_file.write_bytes(b"\xef\xbb\xbf101_1b1_Al_sc_Meditron\ttest\r\n")
    with pytest.raises(IcbhiDataError, match=rf"not in the split file {split_file}, e.g. \['103_2b2_Ar_mc_LittC2SE'\]"):
        build_icbhi_cycles(tmp_path, validation_fraction=0)
    split_file.write_bytes(b"\xef\xbb\xbf103_2b2_Ar_mc_LittC2SE\ttrain\r\n")
    dataset, _ = build_icbhi_cycles(tmp_path, validation_fraction=0)
    assert len(dataset["train"]) == 6


@pytest.mark.parametrize("seconds", [0.0, -8.0, float("nan"), float("inf"), 1e9])
def test_a_window_length_no_segment_can_have_is_refused(seconds):
    with pytest.raises(ValueError, match=r"^seconds must be a number of seconds in \(0, 3600\], got"):
        SegmentWindow(seconds=seconds)
