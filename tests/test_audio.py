import io
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import soxr
import torch
from datasets import Audio, Dataset, DatasetDict
from datasets.utils import _dill as datasets_dill

from resp_hf.audio import decode_audio, decode_audio_column
from resp_hf.models.resp_m2d import audio_utils_resp_m2d as audio_utils
from resp_hf.models.resp_m2d.audio_utils_resp_m2d import load_audio, load_waveform
from resp_hf.tasks.segments import SegmentWindow, decode_segments, recording_duration


def tone(seconds, rate, channels=1, seed=0):
    """Quiet noise in [-0.5, 0.5], shape (samples,) or (samples, channels)."""
    rng = np.random.default_rng(seed)
    shape = (int(seconds * rate),) if channels == 1 else (int(seconds * rate), channels)
    return (rng.uniform(-0.5, 0.5, size=shape)).astype(np.float32)


@pytest.fixture
def audio_files(tmp_path):
    """Small files of several formats, rates and sample types."""
    specs = {
        "pcm16_4k.wav": (4000, "PCM_16"),
        "pcm32_44k.wav": (44100, "PCM_32"),
        "float_16k.wav": (16000, "FLOAT"),
        "pcm16_8k.flac": (8000, "PCM_16"),
    }
    paths = {}
    for seed, (name, (rate, subtype)) in enumerate(specs.items()):
        path = tmp_path / name
        soundfile.write(path, tone(0.25, rate, seed=seed), rate, subtype=subtype)
        paths[name] = path
    return paths


@pytest.fixture
def stereo_file(tmp_path):
    path = tmp_path / "stereo_22k.wav"
    soundfile.write(path, tone(0.2, 22050, channels=2), 22050, subtype="PCM_16")
    return path


# decode_audio


def test_paths_decode_like_load_audio(audio_files):
    for path in audio_files.values():
        expected = load_audio(path, 16000)
        for value in (path, str(path), {"bytes": None, "path": str(path)}):
            decoded = decode_audio(value)
            assert decoded.dtype == np.float32
            np.testing.assert_array_equal(decoded, expected)


def test_bytes_are_decoded_and_preferred_over_path(audio_files, tmp_path):
    path = audio_files["pcm32_44k.wav"]
    value = {"bytes": path.read_bytes(), "path": str(tmp_path / "not_there.wav")}
    np.testing.assert_array_equal(decode_audio(value, sampling_rate=8000), load_audio(path, 8000))
    np.testing.assert_array_equal(decode_audio({"bytes": path.read_bytes()}), load_audio(path, 16000))


def test_decoded_dict_is_resampled_and_converted():
    audio = tone(0.5, 44100)
    decoded = decode_audio({"array": audio.astype(np.float64).tolist(), "sampling_rate": 44100, "path": None})
    expected = soxr.resample(audio, 44100, 16000, quality="HQ")
    assert decoded.dtype == np.float32
    assert decoded.shape == (8000,)
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    same_rate = decode_audio({"array": audio, "sampling_rate": 16000})
    np.testing.assert_array_equal(same_rate, audio)


def test_decoded_integer_pcm_is_rescaled():
    pcm = np.array([0, 16384, -32768], dtype=np.int16)
    decoded = decode_audio({"array": pcm, "sampling_rate": 16000})
    np.testing.assert_array_equal(decoded, np.array([0.0, 0.5, -1.0], dtype=np.float32))


def test_stereo_fails_unless_downmixed(stereo_file):
    with pytest.raises(ValueError, match="multichannel"):
        decode_audio(stereo_file)
    with pytest.raises(ValueError, match="multichannel"):
        decode_audio({"bytes": stereo_file.read_bytes(), "path": None})
    expected = load_audio(stereo_file, 16000, downmix=True)
    np.testing.assert_array_equal(decode_audio(stereo_file, downmix=True), expected)
    from_bytes = decode_audio({"bytes": stereo_file.read_bytes(), "path": None}, downmix=True)
    np.testing.assert_array_equal(from_bytes, expected)
    stereo_array, rate = soundfile.read(stereo_file, dtype="float32")
    from_array = decode_audio({"array": stereo_array, "sampling_rate": rate}, downmix=True)
    np.testing.assert_allclose(from_array, expected, atol=1e-6)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        decode_audio(missing)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        decode_audio({"bytes": None, "path": str(missing)})


def test_corrupt_audio_raises_value_error(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF this is not really audio")
    with pytest.raises(ValueError, match="corrupt.wav"):
        decode_audio(corrupt)
    with pytest.raises(ValueError, match=r"^Could not read the audio bytes of audio 'clip_7.flac': Format not recog"):
        decode_audio({"bytes": b"not audio", "path": "clip_7.flac"})  # libsndfile's reason, not a file object's repr
    with pytest.raises(ValueError, match="Could not read the audio bytes of audio:"):
        decode_audio({"bytes": b"not audio", "path": None})


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"bytes": None, "path": None}, ValueError, r"found keys \['bytes', 'path'\]"),
        ({"audio": "x.wav"}, ValueError, r"found keys \['audio'\]"),
        ({"array": [0.1, 0.2]}, ValueError, "no 'sampling_rate'"),
        ({"array": [0.1, 0.2], "sampling_rate": -5}, ValueError, "must be a positive integer"),
        (np.zeros(16000, dtype=np.float32), TypeError, "Cannot decode audio from a ndarray"),
        (12, TypeError, "Cannot decode audio from a int"),
    ],
)
def test_invalid_values_raise(value, error, message):
    with pytest.raises(error, match=message):
        decode_audio(value)


def test_invalid_target_rate_raises(audio_files):
    with pytest.raises(ValueError, match="sampling_rate must be a positive integer, got 0"):
        decode_audio(audio_files["float_16k.wav"], sampling_rate=0)


# decode_audio_column


def path_dataset(audio_files):
    paths = [str(path) for path in audio_files.values()]
    return Dataset.from_dict({"audio": paths, "label": list(range(len(paths)))})


def check_decoded_rows(dataset, audio_files, sampling_rate=16000, column="audio"):
    for index, path in enumerate(audio_files.values()):
        row = dataset[index]
        assert row["label"] == index
        assert row[column]["sampling_rate"] == sampling_rate
        assert row[column]["path"] == str(path)
        assert row[column]["array"].dtype == np.float32
        np.testing.assert_array_equal(row[column]["array"], load_audio(path, sampling_rate))


def test_string_path_column_is_decoded_lazily(audio_files):
    dataset = decode_audio_column(path_dataset(audio_files), sampling_rate=8000)
    check_decoded_rows(dataset, audio_files, sampling_rate=8000)
    assert dataset.column_names == ["audio", "label"]


def test_audio_feature_column_is_decoded_without_torchcodec(audio_files):
    dataset = path_dataset(audio_files).cast_column("audio", Audio())
    decoded = decode_audio_column(dataset)
    assert decoded.features["audio"] == Audio(decode=False)
    check_decoded_rows(decoded, audio_files)


def test_batches_and_other_columns(audio_files):
    decoded = decode_audio_column(path_dataset(audio_files).cast_column("audio", Audio()))
    batch = decoded[1:3]
    assert batch["label"] == [1, 2]
    paths = list(audio_files.values())[1:3]
    for item, path in zip(batch["audio"], paths):
        np.testing.assert_array_equal(item["array"], load_audio(path, 16000))
    assert decoded["label"] == [0, 1, 2, 3]


def test_column_with_bytes_is_decoded(audio_files):
    paths = list(audio_files.values())
    dataset = Dataset.from_dict(
        {"sound": [{"bytes": path.read_bytes(), "path": path.name} for path in paths]}
    ).cast_column("sound", Audio())
    row = decode_audio_column(dataset, column="sound")[2]
    assert row["sound"]["path"] == paths[2].name
    np.testing.assert_array_equal(row["sound"]["array"], load_audio(paths[2], 16000))


def test_column_of_decoded_dicts_is_resampled():
    audio = tone(0.5, 44100)
    dataset = Dataset.from_dict({"audio": [{"array": audio, "sampling_rate": 44100}]})
    row = decode_audio_column(dataset)[0]
    assert row["audio"]["path"] is None
    expected = soxr.resample(audio, 44100, 16000, quality="HQ")
    np.testing.assert_allclose(row["audio"]["array"], expected, atol=1e-6)


def test_dataset_dict_decodes_every_split(audio_files):
    dataset = path_dataset(audio_files).cast_column("audio", Audio())
    splits = DatasetDict(train=dataset, test=dataset)
    decoded = decode_audio_column(splits)
    assert isinstance(decoded, DatasetDict)
    assert sorted(decoded) == ["test", "train"]
    for split in decoded.values():
        check_decoded_rows(split, audio_files)


def test_stereo_column_downmix(stereo_file):
    dataset = Dataset.from_dict({"audio": [str(stereo_file)]})
    with pytest.raises(ValueError, match="multichannel"):
        decode_audio_column(dataset)[0]
    row = decode_audio_column(dataset, downmix=True)[0]
    np.testing.assert_array_equal(row["audio"]["array"], load_audio(stereo_file, 16000, downmix=True))


def test_missing_file_in_column_names_the_path(tmp_path):
    dataset = Dataset.from_dict({"audio": [str(tmp_path / "gone.flac")]}).cast_column("audio", Audio())
    with pytest.raises(FileNotFoundError, match="gone.flac"):
        decode_audio_column(dataset)[0]


def test_missing_column_lists_available_columns(audio_files):
    with pytest.raises(ValueError, match=r"Column 'speech' not found .* \['audio', 'label'\]"):
        decode_audio_column(path_dataset(audio_files), column="speech")
    splits = DatasetDict(train=path_dataset(audio_files))
    with pytest.raises(ValueError, match="Column 'speech' not found"):
        decode_audio_column(splits, column="speech")


def test_decoded_column_is_fingerprinted_by_its_settings_not_by_walking_the_decoder(audio_files):
    dataset = path_dataset(audio_files)
    first, again = decode_audio_column(dataset), decode_audio_column(dataset)
    assert first._fingerprint == again._fingerprint != decode_audio_column(dataset, sampling_rate=8000)._fingerprint
    transform = first.format["format_kwargs"]["transform"]
    assert len(datasets_dill.dumps(transform)) < 500  # pickled by reference: no code, no globals of decode_audio


# hostile files and rates (audio_utils_resp_m2d, used by every entry point)


def wav_bytes(audio, rate, subtype="PCM_16"):
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def test_wav_shorter_than_its_header_is_refused_and_named(tmp_path):
    data = wav_bytes(tone(1.0, 16000), 16000)
    truncated = tmp_path / "cut_short.wav"
    truncated.write_bytes(data[: len(data) // 2])
    assert len(soundfile.read(truncated)[0]) < 16000  # what libsndfile alone would silently embed
    with pytest.raises(ValueError, match=r"audio file .*cut_short.wav is truncated: its header promises 32,000 bytes"):
        load_audio(truncated, 16000)
    with pytest.raises(ValueError, match="the audio bytes of audio 'cut_short.wav' is truncated"):
        decode_audio({"bytes": data[: len(data) // 2], "path": "cut_short.wav"})
    padded = tmp_path / "odd_chunk_then_data.wav"  # a list chunk before the data chunk is skipped, not misread
    odd = data[:36] + b"LIST\x03\x00\x00\x00abc\x00" + data[36:]
    padded.write_bytes(odd[:4] + (len(odd) - 8).to_bytes(4, "little") + odd[8:])
    np.testing.assert_array_equal(load_audio(padded, 16000), load_audio(io.BytesIO(data), 16000))


def test_wave64_chunks_are_walked_by_their_8_byte_alignment(tmp_path):
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(1.0, 16000), 16000, format="W64", subtype="PCM_16")
    data = buffer.getvalue()
    # Sony Wave64: 16-byte GUID chunk ids, 64-bit sizes counting the 24-byte chunk header, chunks 8-byte aligned.
    fmt_end = 40 + int.from_bytes(data[56:64], "little")  # after the file header (40 bytes) and the fmt chunk
    unknown = bytes.fromhex("6a756e6bf3acd3118cd100c04f8edb8a") + (24 + 3).to_bytes(8, "little") + b"abc" + bytes(5)
    odd = data[:fmt_end] + unknown + data[fmt_end:]
    odd = odd[:16] + len(odd).to_bytes(8, "little") + odd[24:]
    whole = tmp_path / "odd_chunk_then_data.w64"
    whole.write_bytes(odd)
    np.testing.assert_array_equal(load_audio(whole, 16000), load_audio(io.BytesIO(data), 16000))
    short = tmp_path / "odd_chunk_cut_short.w64"
    short.write_bytes(odd[:-1000])
    with pytest.raises(ValueError, match=r"promises 32,000 bytes of audio but only 31,000"):
        load_audio(short, 16000)
    huge = data[:fmt_end] + unknown[:16] + (2**64 - 1).to_bytes(8, "little") + data[fmt_end:]  # past any file's end
    np.testing.assert_array_equal(load_audio(io.BytesIO(huge), 16000), load_audio(io.BytesIO(data), 16000))


# Containers whose header or last page records how much audio there is; libsndfile reads a cut copy without complaint.
LENGTH_RECORDING_CONTAINERS = [
    ("AIFF", "PCM_16", "aiff"),
    ("AU", "PCM_16", "au"),
    ("CAF", "PCM_16", "caf"),
    ("RF64", "PCM_16", "wav"),
    ("W64", "PCM_16", "w64"),
    ("WAVEX", "FLOAT", "wav"),
    ("MP3", "MPEG_LAYER_III", "mp3"),
    ("OGG", "VORBIS", "ogg"),
    ("OGG", "OPUS", "opus"),
]


@pytest.mark.parametrize("container, subtype, suffix", LENGTH_RECORDING_CONTAINERS)
@pytest.mark.parametrize("cut", ["half", "last 20 bytes"])
def test_files_cut_short_are_refused_in_every_container_that_records_its_length(
    tmp_path, container, subtype, suffix, cut
):
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(3.0, 16000), 16000, format=container, subtype=subtype)
    data = buffer.getvalue()
    whole = tmp_path / f"whole.{suffix}"
    whole.write_bytes(data)
    assert len(load_audio(whole, 16000)) == 48000
    short = tmp_path / f"cut_short.{suffix}"
    short.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-20])
    with pytest.raises(ValueError, match=rf"audio file .*cut_short\.{suffix} is truncated"):
        load_audio(short, 16000)


def test_ogg_without_its_last_page_is_refused_and_a_tag_after_the_pages_is_not():
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(3.0, 16000), 16000, format="OGG", subtype="VORBIS")
    data = buffer.getvalue()
    with pytest.raises(ValueError, match="audio stream is truncated: it ends inside an Ogg page or without"):
        load_audio(io.BytesIO(data[: data.rindex(b"OggS")]), 16000)  # ends on a page boundary, before the last page
    tagged = data + b"TAG" + bytes(125)  # an ID3v1 tag appended by a tagger
    np.testing.assert_array_equal(load_audio(io.BytesIO(tagged), 16000), load_audio(io.BytesIO(data), 16000))


def flac_claiming(audio, total_frames, rate=16000, subtype="PCM_16"):
    """
    FLAC bytes of `audio` whose STREAMINFO says the stream holds `total_frames` (a 36-bit field at bytes 21-25; 0 is a
    stream of unknown length, as FLAC encoders write to a pipe).
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="FLAC", subtype=subtype)
    data = bytearray(buffer.getvalue())
    field = (int.from_bytes(data[21:26], "big") & ~(2**36 - 1)) | total_frames
    data[21:26] = field.to_bytes(5, "big")
    return bytes(data)


def test_a_corrupt_length_is_refused_before_anything_is_allocated_for_it(tmp_path):
    path = tmp_path / "huge_claim.flac"
    path.write_bytes(flac_claiming(tone(1.0, 16000), 2**36 - 1))  # 49 days at 16 kHz in a few kB
    with pytest.raises(ValueError, match=r"huge_claim.flac claims 68,719,476,735 frames .* its header is corrupt"):
        load_audio(path, 16000)
    path.write_bytes(flac_claiming(tone(1.0, 16000), 20 * 16000))  # plausible, but the stream ends after 1 s
    with pytest.raises(ValueError, match=r"audio file .*huge_claim\.flac"):
        load_audio(path, 16000)


def test_a_flac_stream_of_unknown_length_is_read_whole_and_its_duration_counted(tmp_path):
    for rate, subtype, channels in [
        (16000, "PCM_16", 1),
        (12345, "PCM_24", 2),
        (44100, "PCM_S8", 6),
        (8000, "PCM_16", 1),
    ]:
        audio = tone(1.7, rate, channels, seed=channels)
        known = io.BytesIO(flac_claiming(audio, len(audio), rate, subtype))
        path = tmp_path / f"streamed_{rate}.flac"
        path.write_bytes(flac_claiming(audio, 0, rate, subtype))
        assert soundfile.info(path).frames == audio_utils.UNKNOWN_FRAMES  # what libsndfile makes of "0 samples"
        expected = load_audio(known, rate, downmix=True)
        assert len(expected) == len(audio)
        np.testing.assert_array_equal(load_audio(path, rate, downmix=True), expected)
        np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes()), rate, downmix=True), expected)
        assert audio_utils.item_duration(path, None) == audio_utils.item_duration(path.read_bytes(), None)
        assert audio_utils.item_duration(path, None) == len(audio) / rate
        if channels == 1:
            assert recording_duration(path, "test") == len(audio) / rate
    silence = np.zeros(16000 * 130, dtype=np.float32)  # longer than the first read buffer: it grows
    path.write_bytes(flac_claiming(silence, 0))
    assert len(silence) > max(audio_utils.READ_BLOCK_FRAMES, 64 * path.stat().st_size)
    np.testing.assert_array_equal(load_audio(path, 16000), silence)


def test_a_flac_stream_of_unknown_length_cut_inside_a_frame_is_refused(tmp_path):
    data = flac_claiming(tone(2.0, 16000), 0)
    path = tmp_path / "cut.flac"
    for cut in (len(data) - 1, len(data) - 700, len(data) // 2, 300):
        path.write_bytes(data[:cut])
        with pytest.raises(
            ValueError, match=r"cut.flac is truncated: its FLAC stream \(of unknown length\) ends inside"
        ):
            load_audio(path, 16000)
        with pytest.raises(ValueError, match=r"cut.flac is truncated"):
            recording_duration(path, "test")
    path.write_bytes(data + b"TAG" + bytes(125))  # an ID3v1 tag appended by a tagger
    np.testing.assert_array_equal(load_audio(path, 16000), load_audio(io.BytesIO(data), 16000))
    with pytest.raises(ValueError, match="cut.flac is truncated"):  # the STREAMINFO block itself cut
        path.write_bytes(data[:30])
        load_audio(path, 16000)


def test_flac_checksums_match_the_standard_check_values():
    # CRC-8 (polynomial 0x07) and CRC-16 (polynomial 0x8005), both unreflected from 0, of the bytes "123456789".
    assert audio_utils.crc(b"123456789", 0x07, 8) == 0xF4
    assert audio_utils.crc(b"123456789", 0x8005, 16) == 0xFEE8


def test_highly_compressed_audio_longer_than_its_first_buffer_is_read_whole(tmp_path):
    audio = np.zeros(16000 * 130, dtype=np.float32)  # digital silence: FLAC packs ~350 frames in a byte
    audio[-1] = 0.25
    path = tmp_path / "quiet.flac"
    soundfile.write(path, audio, 16000)
    assert len(audio) > max(audio_utils.READ_BLOCK_FRAMES, 64 * path.stat().st_size)  # the buffer grows
    np.testing.assert_array_equal(load_audio(path, 16000), soundfile.read(path, dtype="float32")[0])


def test_absurd_header_rate_is_refused_before_resampling_allocates(tmp_path):
    data = bytearray(wav_bytes(tone(1.0, 16000), 16000))
    data[24:28] = (1).to_bytes(4, "little")  # sample rate
    data[28:32] = (2).to_bytes(4, "little")  # byte rate
    path = tmp_path / "one_hertz.wav"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"one_hertz.wav is at 1 Hz: resampling it to 16000 Hz would make 256,000,000"):
        load_audio(path, 16000)
    with pytest.raises(ValueError, match="Rates below 1000 Hz are refused"):
        load_waveform(tone(0.1, 16000), 10, 16000)


def test_sampling_rate_given_with_a_source_that_has_one_must_agree(audio_files):
    path = audio_files["pcm16_8k.flac"]
    np.testing.assert_array_equal(load_waveform(path, 8000, 16000), load_audio(path, 16000))
    with pytest.raises(ValueError, match=r"pcm16_8k.flac carries its own sampling rate \(8000 Hz\) but sampling_rate"):
        load_waveform(path, 16000, 16000)
    with pytest.raises(ValueError, match=r"the audio bytes carries its own sampling rate \(8000 Hz\)"):
        load_waveform(path.read_bytes(), 44100, 16000)
    with pytest.raises(ValueError, match=r"audio carries its own sampling rate \(8000 Hz\)"):
        load_waveform({"array": tone(0.1, 8000), "sampling_rate": 8000}, 16000, 16000)
    # In a batch that also has arrays, sampling_rate is theirs and the file keeps its own.
    np.testing.assert_array_equal(load_waveform(path, 16000, 16000, rate_of_arrays_only=True), load_audio(path, 16000))


def test_bytes_and_decoders_are_decoded():
    audio = tone(0.5, 8000)
    data = wav_bytes(audio, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(decode_audio(data), soxr.resample(audio, 8000, 16000, quality="HQ"))
    samples = SimpleNamespace(data=torch.from_numpy(audio[None]), sample_rate=8000)
    decoder = SimpleNamespace(get_all_samples=lambda: samples)
    np.testing.assert_array_equal(decode_audio(decoder), decode_audio(data))


def test_files_are_read_block_by_block_like_a_whole_read(stereo_file, monkeypatch):
    whole, rate = soundfile.read(stereo_file, dtype="float32")
    monkeypatch.setattr(audio_utils, "READ_BLOCK_FRAMES", 1000)  # the 0.2 s file is read in 5 blocks
    np.testing.assert_array_equal(load_audio(stereo_file, rate, downmix=True), whole.mean(axis=1, dtype=np.float32))


# segments of recordings


@pytest.mark.parametrize(
    "start, end, problem",
    [
        (-0.5, 1.5, r"times must be finite and non-negative \(-0.5 to 1.5 s\)"),
        (-1.9, 1.0, r"times must be finite and non-negative \(-1.9 to 1.0 s\)"),
        (float("nan"), 0.5, r"times must be finite and non-negative \(nan to 0.5 s\)"),
        (0.1, float("inf"), r"times must be finite and non-negative \(0.1 to inf s\)"),
        (0.2, 0.1, r"zero or negative length \(0.2 to 0.1 s\)"),
        (0.3, 0.4, r"starts at 0.3 s, after the end of the file \(0.250 s\)"),
    ],
)
def test_segment_bounds_that_cannot_be_read_are_errors_naming_the_file(audio_files, start, end, problem):
    path = audio_files["float_16k.wav"]  # 0.25 s
    with pytest.raises(ValueError, match=rf"^Cannot read a segment of {path}: {problem}\.$"):
        decode_audio({"path": str(path), "start": start, "end": end})
    rows = Dataset.from_dict({"path": [str(path)], "start": [start], "end": [end]})
    with pytest.raises(ValueError, match=rf"^Cannot read a segment of {path}: {problem}\.$"):
        decode_segments(rows, window=SegmentWindow())[0]


def test_segments_of_a_stereo_recording_fail_unless_downmixed(stereo_file):
    rows = Dataset.from_dict({"path": [str(stereo_file)], "start": [0.05], "end": [0.15]})
    with pytest.raises(ValueError, match=f"{stereo_file} has 2 channels.*Pass downmix=True"):
        decode_segments(rows)[0]
    whole = load_audio(stereo_file, 16000, downmix=True)
    np.testing.assert_array_equal(decode_segments(rows, downmix=True)[0]["audio"]["array"], whole[800:2400])
