import csv
import re
from collections import Counter

import numpy as np
import pytest
import soundfile
import torch

from resp_hf import RespM2DConfig
from resp_hf.cli import main as cli_main
from resp_hf.training.pretrain_data import LogMelUnits, read_source


def write_wav(path, seconds=0.2):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    return path


@pytest.fixture
def datasets(tmp_path):
    """Small copies of the paper's sources in their published layouts."""
    icbhi = tmp_path / "icbhi" / "ICBHI_final_database"
    recordings = (
        "101_1b1_Al_sc_Meditron",
        "102_1b1_Ar_sc_Meditron",
        "103_2b2_Ar_mc_LittC2SE",
        "104_1b1_Ll_sc_Litt3200",
    )
    for name in recordings:
        write_wav(icbhi / f"{name}.wav")
    # The official split: CRLF lines, a training recording without its .wav (as in the real 921-line list).
    (icbhi.parent / "ICBHI_challenge_train_test.txt").write_bytes(
        b"101_1b1_Al_sc_Meditron\ttrain\r\n102_1b1_Ar_sc_Meditron\ttest\r\n103_2b2_Ar_mc_LittC2SE\ttrain\r\n"
        b"104_1b1_Ll_sc_Litt3200\ttrain\r\n226_1b1_Pl_sc_LittC2SE\ttrain\r\n"
    )
    hf_lung = tmp_path / "HF_Lung_V2"
    for name in ("train/steth_1.wav", "train/trunc_2.wav"):
        write_wav(hf_lung / name)
    coughvid = tmp_path / "coughvid"
    scores = {"a1": "0.99", "b2": "0.9501", "c3": "0.95", "d4": "0.2", "e5": ""}
    coughvid.mkdir()
    with open(coughvid / "metadata_compiled.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uuid", "datetime", "cough_detected", "status"])
        writer.writerows([[uuid, "2020-04-13", score, "healthy"] for uuid, score in scores.items()])
    for uuid in scores:
        write_wav(coughvid / f"{uuid}.wav")
    audioset = tmp_path / "audioset"
    for index in range(3):
        write_wav(audioset / f"clip{index}.wav")
    return {"icbhi": icbhi, "hf_lung": hf_lung, "coughvid": coughvid, "audioset": audioset}


def command(datasets, output, *extra):
    arguments = ["pretrain-data", "--output", str(output), "--audioset", str(datasets["audioset"])]
    for name in ("icbhi", "hf_lung", "coughvid"):
        arguments += [f"--{name.replace('_', '-')}", str(datasets[name])]
    return [*arguments, *extra]


def test_the_papers_filters_and_repetitions_give_the_lists_and_counts(datasets, tmp_path, capsys):
    output = tmp_path / "lists"
    assert cli_main(command(datasets, output)) == 0
    report = capsys.readouterr().out
    respiratory = Counter(read_source(output / "respiratory.csv"))
    icbhi = {str(datasets["icbhi"] / f"{name}.wav") for name in ("101_1b1_Al_sc_Meditron", "103_2b2_Ar_mc_LittC2SE")}
    icbhi.add(str(datasets["icbhi"] / "104_1b1_Ll_sc_Litt3200.wav"))
    hf_lung = {str(datasets["hf_lung"] / "train" / name) for name in ("steth_1.wav", "trunc_2.wav")}
    coughvid = {str(datasets["coughvid"] / f"{uuid}.wav") for uuid in ("a1", "b2")}  # strictly above 0.95
    assert respiratory == {**{path: 6 for path in icbhi}, **{path: 1 for path in hf_lung | coughvid}}
    mixture = Counter(read_source(output / "mixture.csv"))
    audioset = {str(datasets["audioset"] / f"clip{index}.wav") for index in range(3)}
    assert mixture == {**{path: 1 for path in audioset}, **{path: 29 * n for path, n in respiratory.items()}}
    for name, count, paper in [
        ("icbhi_train", 3, 539),
        ("icbhi", 18, 3234),
        ("hf_lung", 2, 3839),
        ("coughvid", 2, 7054),
        ("respiratory", 22, 14127),
        ("respiratory_repeated", 638, 409683),
        ("audioset", 3, 2005132),
        ("mixture", 641, 2414815),
    ]:
        assert re.search(rf"^  {name} +{count:,} +\(paper: {paper:,}\)$", report, re.MULTILINE), name
    assert "1 training recordings with no .wav: 226_1b1_Pl_sc_LittC2SE" in report

    assert cli_main(command(datasets, output)) == 2  # an earlier output is not replaced silently
    assert cli_main(command(datasets, output, "--repeat", "2", "--overwrite")) == 0
    assert len(read_source(output / "mixture.csv")) == 3 + 2 * 22


def test_missing_coughvid_audio_and_a_missing_split_file_are_clear_errors(datasets, tmp_path, capsys):
    (datasets["coughvid"] / "b2.wav").unlink()
    assert cli_main(command(datasets, tmp_path / "a")) == 2
    assert "1 CoughVID recordings with cough_detected > 0.95 have no audio file" in capsys.readouterr().err
    (datasets["icbhi"].parent / "ICBHI_challenge_train_test.txt").unlink()
    assert cli_main(command(datasets, tmp_path / "b")) == 2
    assert "ICBHI_challenge_train_test.txt (ICBHI's official split) is not in" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def truncated(path):
    np.save(path, np.zeros((80, 50), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-100])


def pickled(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def npz(path):
    with open(path, "wb") as handle:
        np.savez(handle, mel=np.zeros((80, 50), dtype=np.float32))


@pytest.mark.parametrize(
    "write, problem",
    [
        (lambda p: np.save(p, np.full((80, 50), np.nan, dtype=np.float32)), "holds NaN or Inf values"),
        (lambda p: np.save(p, np.full((80, 50), -np.inf)), "holds NaN or Inf values"),
        (lambda p: np.save(p, np.full((80, 50), 1e300)), "holds NaN or Inf values"),  # beyond float32
        (truncated, "is not a readable .npy log-mel: Failed to read all data"),
        (lambda p: p.write_bytes(b""), "is not a readable .npy log-mel: EOF"),
        (pickled, "is not a readable .npy log-mel: Object arrays cannot be loaded when allow_pickle=False"),
        (npz, "is not a readable .npy log-mel: the magic string is not correct"),
        (
            lambda p: np.save(p, np.zeros((64, 50), dtype=np.float32)),
            r"holds shape \(64, 50\), expected \(80, frames\)",
        ),
        (lambda p: np.save(p, np.zeros((1, 80, 50), dtype=np.float32)), r"holds shape \(1, 80, 50\)"),
        (lambda p: np.save(p, np.zeros((80, 0), dtype=np.float32)), r"holds shape \(80, 0\)"),
        (lambda p: np.save(p, np.zeros((80, 50), dtype=np.int16)), "holds int16 values, expected a floating-point"),
        (lambda p: np.save(p, np.zeros((80, 50), dtype=np.complex64)), "holds complex64 values"),
    ],
    ids=["nan", "inf", "overflow", "truncated", "empty", "pickled", "npz", "mels", "3d", "no_frames", "int", "complex"],
)
def test_a_damaged_npy_log_mel_is_refused_naming_the_file_and_the_problem(tmp_path, write, problem):
    path = tmp_path / "clip.npy"
    write(path)
    units = LogMelUnits([str(path)], RespM2DConfig(input_size=(80, 96), patch_size=(16, 16)))
    with pytest.raises(ValueError, match=f"^{path} {problem}") as error:
        units[0]
    assert len(str(error.value).splitlines()) == 1


def test_a_stored_log_mel_of_any_float_type_is_read_as_float32(tmp_path):
    values = np.random.default_rng(0).standard_normal((80, 50))
    np.save(tmp_path / "clip.npy", values.astype(">f8"))  # big-endian float64
    units = LogMelUnits([], RespM2DConfig())
    features = units.log_mel(str(tmp_path / "clip.npy"))
    assert features.dtype == torch.float32
    np.testing.assert_array_equal(features.numpy(), values.astype(np.float32))


def test_logmel_and_pretrain_data_refuse_an_output_folder_that_holds_their_inputs(datasets, tmp_path, capsys):
    audio = datasets["audioset"]
    assert cli_main(["logmel", str(audio), str(audio), "--overwrite"]) == 2
    assert f"is or holds the input {audio}" in capsys.readouterr().err
    assert cli_main(["logmel", str(audio), str(audio.parent), "--overwrite"]) == 2
    assert len(list(audio.glob("*.wav"))) == 3
    assert cli_main(command(datasets, datasets["coughvid"], "--overwrite")) == 2
    assert f"is or holds the input {datasets['coughvid']}" in capsys.readouterr().err
    assert (datasets["coughvid"] / "metadata_compiled.csv").is_file() and len(list(audio.glob("*.wav"))) == 3


def refusal(capsys):
    """The one line a refused `resp-hf pretrain-data` run prints."""
    error = capsys.readouterr().err
    assert error.startswith("resp-hf pretrain-data: error: ") and error.count("\n") == 1
    return error


def add_coughvid_row(datasets, uuid, score):
    with open(datasets["coughvid"] / "metadata_compiled.csv", "a", newline="") as handle:
        csv.writer(handle).writerow([uuid, "2020-04-13", score, "healthy"])


def test_a_coughvid_uuid_listed_twice_is_refused_naming_both_lines(datasets, tmp_path, capsys):
    add_coughvid_row(datasets, "a1", "0.99")
    assert cli_main(command(datasets, tmp_path / "lists")) == 2
    metadata = datasets["coughvid"] / "metadata_compiled.csv"
    assert f"{metadata}, line 7: uuid a1 is listed again (first on line 2)." in refusal(capsys)
    assert not (tmp_path / "lists").exists()


@pytest.mark.parametrize("score", ["nan", "1.5", "-0.1", "inf", "high"])
def test_a_coughvid_score_that_is_not_from_0_to_1_is_refused_naming_the_line(datasets, tmp_path, capsys, score):
    add_coughvid_row(datasets, "f6", score)
    write_wav(datasets["coughvid"] / "f6.wav")
    assert cli_main(command(datasets, tmp_path / "lists")) == 2
    metadata = datasets["coughvid"] / "metadata_compiled.csv"
    assert f"{metadata}, line 7: cough_detected is {score!r}, not a score from 0 to 1." in refusal(capsys)
    assert not (tmp_path / "lists").exists()


@pytest.mark.parametrize("threshold", ["nan", "5", "-0.5", "1"])
def test_a_cough_threshold_that_keeps_nothing_is_refused_before_any_work(datasets, tmp_path, capsys, threshold):
    (datasets["icbhi"].parent / "ICBHI_challenge_train_test.txt").unlink()  # not reached: refused first
    assert cli_main(command(datasets, tmp_path / "lists", "--cough_threshold", threshold)) == 2
    expected = f"--cough_threshold must be at least 0 and below 1 (paper: 0.95), got {float(threshold)}."
    assert expected in refusal(capsys)
    assert not (tmp_path / "lists").exists()


def test_an_audioset_list_naming_missing_files_is_refused_naming_the_first(datasets, tmp_path, capsys):
    audioset = tmp_path / "audioset.csv"
    audioset.write_text(f"path\n{datasets['audioset'] / 'clip0.wav'}\nmissing.wav\n{tmp_path / 'gone.wav'}\n")
    assert cli_main([*command(datasets, tmp_path / "lists"), "--audioset", str(audioset)]) == 2
    expected = f"{audioset} lists 2 files that do not exist (first: line 3, {tmp_path / 'missing.wav'})"
    assert expected in refusal(capsys)
    assert not (tmp_path / "lists").exists()
