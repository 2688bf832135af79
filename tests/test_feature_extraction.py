from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import soxr
import torch
from conftest import noise, tiny_config

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel
from resp_hf.models.resp_m2d import feature_extraction_resp_m2d as feature_extraction_module
from resp_hf.models.resp_m2d.audio_utils_resp_m2d import load_audio
from resp_hf.models.resp_m2d.feature_extraction_resp_m2d import slaney_mel_filter_bank


@pytest.fixture(scope="module")
def golden_extractor():
    return RespM2DFeatureExtractor(mean=-5.300000190734863, std=3.9000000953674316)


def test_log_mel_matches_original_runtime(golden_extractor, golden_audio, golden_expected):
    for name, audio in golden_audio.items():
        features = golden_extractor(audio, sampling_rate=16000)["input_features"]
        expected = golden_expected[f"{name}/log_mel"]
        assert features.shape == (1, *expected.shape), name
        assert np.abs(features[0].numpy() - expected).max() < 1e-3, name


def test_batch_gives_each_clip_its_own_frames(golden_extractor, golden_audio, golden_meta):
    names = list(golden_audio)
    batch = golden_extractor([golden_audio[name] for name in names], sampling_rate=16000)
    longest = max(meta["log_mel_frames"] for meta in golden_meta.values())
    assert batch["input_features"].shape == (len(names), 80, longest)
    for row, name in enumerate(names):
        frames = golden_meta[name]["log_mel_frames"]
        alone = golden_extractor(golden_audio[name], sampling_rate=16000)["input_features"][0]
        assert batch["attention_mask"][row].sum() == frames
        assert torch.equal(batch["attention_mask"][row, :frames], torch.ones(frames, dtype=torch.int32))
        assert torch.allclose(batch["input_features"][row, :, :frames], alone, atol=1e-5)
        assert torch.all(batch["input_features"][row, :, frames:] == 0.0)


def test_integer_pcm_is_rescaled_like_float():
    extractor = RespM2DFeatureExtractor()
    pcm = (noise(1.0) * 2**15).astype(np.int16)
    as_float = extractor(pcm.astype(np.float32) / 2**15, sampling_rate=16000)["input_features"]
    assert torch.allclose(extractor(pcm, sampling_rate=16000)["input_features"], as_float, atol=1e-6)
    pcm32 = pcm.astype(np.int32) * 2**16
    assert torch.allclose(extractor(pcm32, sampling_rate=16000)["input_features"], as_float, atol=1e-6)


def test_other_rates_are_resampled_with_soxr():
    extractor = RespM2DFeatureExtractor()
    audio_44k = noise(1.0, rate=44100)
    expected = extractor(soxr.resample(audio_44k, 44100, 16000, quality="HQ"), sampling_rate=16000)["input_features"]
    features = extractor(audio_44k, sampling_rate=44100)["input_features"]
    assert features.shape == expected.shape == (1, 80, 101)
    assert torch.allclose(features, expected, atol=1e-6)


def test_torch_and_list_inputs_and_numpy_output():
    extractor = RespM2DFeatureExtractor()
    audio = noise(0.5)
    reference = extractor(audio, sampling_rate=16000)["input_features"]
    assert torch.equal(extractor(torch.from_numpy(audio), sampling_rate=16000)["input_features"], reference)
    assert torch.allclose(extractor(audio.tolist(), sampling_rate=16000)["input_features"], reference)
    as_numpy = extractor([audio], sampling_rate=16000, return_tensors="np")
    assert isinstance(as_numpy["input_features"], np.ndarray)
    np.testing.assert_array_equal(as_numpy["input_features"], reference.numpy())


def test_single_channel_2d_half_precision_and_float64_default_inputs():
    extractor = RespM2DFeatureExtractor()
    audio = noise(0.5)
    reference = extractor(audio, sampling_rate=16000)["input_features"]
    for single_channel in (audio[None], audio[:, None]):  # (1, T) as torchaudio reads it, (T, 1) as soundfile does
        assert torch.equal(extractor(single_channel, sampling_rate=16000)["input_features"], reference)
    as_bf16 = torch.from_numpy(audio).bfloat16()
    expected = extractor(as_bf16.float().numpy(), sampling_rate=16000)["input_features"]
    assert torch.equal(extractor(as_bf16, sampling_rate=16000)["input_features"], expected)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert torch.equal(extractor(audio, sampling_rate=16000)["input_features"], reference)
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("n_fft, win_length", [(400, 400), (401, 401), (512, 400)])
def test_num_frames_counts_what_the_stft_makes(n_fft, win_length):
    extractor = RespM2DFeatureExtractor(n_fft=n_fft, win_length=win_length)
    for samples in (n_fft // 2 + 1, 16000, 16159, 16160, 16161):
        features = extractor(noise(samples / 16000), sampling_rate=16000)["input_features"]
        assert features.shape[-1] == extractor.num_frames(samples), samples


def test_mel_range_above_nyquist_is_an_error():
    with pytest.raises(ValueError, match="sampling_rate / 2 = 4000 Hz"):
        RespM2DFeatureExtractor(sampling_rate=8000, n_fft=200, win_length=200, hop_length=80)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"std": 0}, "std finite and positive, got -7.1 and 0"),
        ({"std": -1.0}, "std finite and positive, got -7.1 and -1.0"),
        ({"std": True}, "std finite and positive, got -7.1 and True"),
        ({"mean": float("nan")}, "mean must be finite"),
        ({"feature_size": 0}, r"Invalid settings: feature_size=0 \(an integer >= 1\)"),
        ({"n_fft": "400"}, r"Invalid settings: n_fft='400'"),
        ({"n_fft": 1e12}, r"Invalid settings: n_fft=1000000000000.0"),
        ({"hop_length": 0}, r"Invalid settings: hop_length=0"),
        ({"sampling_rate": None}, "sampling_rate must be a positive integer, got None"),
        ({"padding_value": float("nan")}, r"padding_value=nan must be a finite number"),
        ({"padding_value": float("-inf")}, r"padding_value=-inf must be a finite number"),
        ({"padding_value": "zero"}, r"padding_value='zero' must be a finite number"),
        ({"padding_value": None}, r"padding_value=None must be a finite number"),
        ({"padding_side": "center"}, r"padding_side='center' must be 'left' or 'right'"),
    ],
)
def test_malformed_front_end_settings_are_refused_when_the_extractor_is_made(setting, message):
    with pytest.raises(ValueError, match=message) as error:
        RespM2DFeatureExtractor(**setting)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("padding_value, shown", [("NaN", "nan"), ('"zero"', "'zero'"), ("Infinity", "inf")])
def test_a_saved_padding_value_that_is_not_a_finite_number_is_refused_on_loading(tmp_path, padding_value, shown):
    """Otherwise it loads and fails at the first batch, blaming the audio."""
    RespM2DFeatureExtractor().save_pretrained(tmp_path)
    saved = tmp_path / "preprocessor_config.json"
    saved.write_text(saved.read_text().replace('"padding_value": 0.0', f'"padding_value": {padding_value}'))
    with pytest.raises(ValueError, match=f"padding_value={shown} must be a finite number") as error:
        RespM2DFeatureExtractor.from_pretrained(tmp_path)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("saved, kind", [("[1, 2]", "list"), ("16000", "int"), ('"settings"', "str")])
def test_a_preprocessor_config_that_is_not_an_object_is_refused_naming_the_file(tmp_path, saved, kind):
    RespM2DFeatureExtractor().save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(saved)
    expected = f"preprocessor_config.json in {tmp_path} must hold one JSON object of settings, not a {kind}."
    with pytest.raises(ValueError) as error:
        RespM2DFeatureExtractor.from_pretrained(tmp_path)
    assert str(error.value) == expected


def test_a_batch_of_no_clips_and_a_clip_that_overflows_the_log_mel_are_named():
    extractor = RespM2DFeatureExtractor()
    with pytest.raises(ValueError, match=r"a batch of no clips \(shape \(0, 100\)\)"):
        extractor(np.zeros((0, 100), np.float32), sampling_rate=16000)
    loud = [noise(1.0), np.full(16000, 1e38, np.float32)]
    with pytest.raises(ValueError, match=r"audio clip 1 overflows the float32 log-mel: its samples reach 1e\+38"):
        extractor(loud, sampling_rate=16000)


def test_attention_mask_can_be_left_out():
    extractor = RespM2DFeatureExtractor()
    assert "attention_mask" not in extractor(noise(0.5), sampling_rate=16000, return_attention_mask=False)


def test_stereo_needs_an_explicit_downmix():
    extractor = RespM2DFeatureExtractor()
    stereo = np.stack([noise(0.5, seed=1), noise(0.5, seed=2)], axis=1)  # (samples, channels) as soundfile reads it
    with pytest.raises(ValueError, match="multichannel"):
        extractor(stereo, sampling_rate=16000)
    mixed = extractor(stereo, sampling_rate=16000, downmix=True)["input_features"]
    expected = extractor(stereo.mean(axis=1), sampling_rate=16000)["input_features"]
    assert torch.allclose(mixed, expected, atol=1e-6)
    channels_first = extractor(stereo.T.copy(), sampling_rate=16000, downmix=True)["input_features"]
    assert torch.allclose(channels_first, expected, atol=1e-6)


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.1, np.nan] * 400, dtype=np.float32), "NaN or Inf"),
        (np.array([0.1, np.inf] * 400, dtype=np.float32), "NaN or Inf"),
        (np.zeros(100, dtype=np.float32), "too short"),
        (np.zeros((2, 2, 800), dtype=np.float32), "1-D waveform"),
        (np.arange(1000), "dtype int64"),
        ([], "audio is empty"),
    ],
)
def test_bad_audio_is_a_clear_error(audio, message):
    with pytest.raises(ValueError, match=message):
        RespM2DFeatureExtractor()(audio, sampling_rate=16000)


def test_bad_clip_is_named_by_its_index():
    with pytest.raises(ValueError, match="audio clip 1 contains NaN"):
        RespM2DFeatureExtractor()([noise(0.5), np.full(8000, np.nan, dtype=np.float32)], sampling_rate=16000)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5])
def test_bad_sampling_rate_is_an_error(rate):
    with pytest.raises(ValueError, match="sampling_rate"):
        RespM2DFeatureExtractor()(noise(0.5), sampling_rate=rate)


def test_32k_front_end_follows_the_config():
    config = RespM2DConfig(sampling_rate=32000)
    assert (config.n_fft, config.win_length, config.hop_length, config.f_min, config.f_max) == (
        800,
        800,
        320,
        50.0,
        16000.0,
    )
    extractor = RespM2DFeatureExtractor.from_model_config(config)
    features = extractor(noise(1.0, rate=32000), sampling_rate=32000)["input_features"]
    assert features.shape == (1, 80, 101)
    np.testing.assert_allclose(extractor.mel_filters, slaney_mel_filter_bank(32000, 800, 80, 50.0, 16000.0))


def test_mel_filters_are_slaney_normalized_triangles():
    filters = slaney_mel_filter_bank(16000, 400, 80, 50.0, 8000.0)
    assert filters.shape == (80, 201)
    assert (filters >= 0).all()
    # Slaney normalization gives each triangle unit area in Hz; wide high-frequency triangles show it best.
    bin_hz = 16000 / 400
    np.testing.assert_allclose(filters[-10:].sum(axis=1) * bin_hz, 1.0, rtol=0.02)
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()


def test_save_and_load_round_trip(tmp_path):
    extractor = RespM2DFeatureExtractor(mean=-6.0, std=3.5)
    extractor.save_pretrained(tmp_path)
    loaded = RespM2DFeatureExtractor.from_pretrained(tmp_path)
    audio = noise(0.7)
    assert torch.equal(
        loaded(audio, sampling_rate=16000)["input_features"], extractor(audio, sampling_rate=16000)["input_features"]
    )


def test_load_audio_reads_resamples_and_reports_problems(tmp_path):
    audio = noise(1.0, rate=44100)
    path = tmp_path / "clip.wav"
    soundfile.write(path, audio, 44100, subtype="PCM_24")
    loaded = load_audio(path, 16000)
    assert loaded.dtype == np.float32 and loaded.shape == (16000,)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav", 16000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(ValueError, match="Could not read audio file .*broken.wav"):
        load_audio(broken, 16000)
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([audio, audio], axis=1), 44100)
    with pytest.raises(ValueError, match="stereo.wav .*multichannel"):
        load_audio(stereo, 16000)
    np.testing.assert_allclose(load_audio(stereo, 16000, downmix=True), loaded, atol=1e-4)


def test_float_audio_far_outside_unit_range_is_warned_about(caplog):
    pcm_as_float = (noise(0.5) * 2**15).astype(np.float32)
    with caplog.at_level("WARNING"):
        RespM2DFeatureExtractor()(pcm_as_float, sampling_rate=16000)
    assert "float audio is expected in [-1, 1]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        RespM2DFeatureExtractor()(noise(0.5), sampling_rate=16000)
    assert "expected in [-1, 1]" not in caplog.text


def test_downmixing_a_file_averages_its_channels_even_when_it_has_more_channels_than_frames(tmp_path):
    frames = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.8], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    soundfile.write(tmp_path / "four.wav", frames, 16000, subtype="FLOAT")
    mixed = load_audio(tmp_path / "four.wav", 16000, downmix=True)
    np.testing.assert_allclose(mixed, frames.mean(axis=1), rtol=0, atol=1e-7)


def test_bad_sampling_rates_are_clear_errors():
    for rate in ("16000", True, 0, -8000, float("nan"), float("inf"), 16000.5):
        with pytest.raises(ValueError, match=r"sampling_rate must be a positive integer, got"):
            RespM2DFeatureExtractor()(noise(0.5), sampling_rate=rate)
    reference = RespM2DFeatureExtractor()(noise(0.5), sampling_rate=16000)["input_features"]
    assert torch.equal(RespM2DFeatureExtractor()(noise(0.5), sampling_rate=16000.0)["input_features"], reference)
    as_numpy_int = RespM2DFeatureExtractor()(noise(0.5), sampling_rate=np.int64(16000))["input_features"]
    assert torch.equal(as_numpy_int, reference)


def test_blockwise_stft_equals_the_whole_recording_at_once(monkeypatch, golden_audio):
    extractor = RespM2DFeatureExtractor()
    clips = [noise(3.3, seed=1), golden_audio["kauh_BP1_asthma"], noise(0.4, seed=2)]
    whole = extractor(clips, sampling_rate=16000)
    assert whole["input_features"].shape[-1] < feature_extraction_module.STFT_BLOCK_FRAMES
    # Blocks of 100 frames with a ragged last one (matrix products of a few columns may round differently).
    monkeypatch.setattr(feature_extraction_module, "STFT_BLOCK_FRAMES", 100)
    stft, frames_per_call = torch.stft, []

    def recording_stft(samples, *args, **kwargs):
        spectrum = stft(samples, *args, **kwargs)
        frames_per_call.append(spectrum.shape[-1])
        return spectrum

    monkeypatch.setattr(torch, "stft", recording_stft)
    blocks = extractor(clips, sampling_rate=16000)
    assert max(frames_per_call) == 100 and sum(frames_per_call) == whole["input_features"].shape[-1]
    assert torch.equal(blocks["input_features"], whole["input_features"])
    assert torch.equal(blocks["attention_mask"], whole["attention_mask"])


def test_padding_longest_max_length_and_multiple_of_count_samples():
    extractor = RespM2DFeatureExtractor()
    clips = [noise(1.0, seed=1), noise(0.6, seed=2)]
    longest = extractor(clips, sampling_rate=16000)
    explicit = extractor(clips, sampling_rate=16000, padding="longest")
    assert torch.equal(explicit["input_features"], longest["input_features"])
    padded = extractor(clips, sampling_rate=16000, padding="max_length", max_length=24000)
    frames = extractor.num_frames(24000)
    assert padded["input_features"].shape == (2, 80, frames)
    assert torch.equal(padded["input_features"][:, :, :101], longest["input_features"])
    assert torch.all(padded["input_features"][:, :, 101:] == 0.0)
    assert padded["attention_mask"].sum(-1).tolist() == [101, 61]
    multiple = extractor(clips, sampling_rate=16000, pad_to_multiple_of=12000)
    assert multiple["input_features"].shape[-1] == extractor.num_frames(24000)
    assert torch.equal(multiple["attention_mask"], padded["attention_mask"])


def test_truncation_cuts_clips_to_max_length_samples():
    extractor = RespM2DFeatureExtractor()
    clips = [noise(1.0, seed=1), noise(0.3, seed=2)]
    cut = extractor(clips, sampling_rate=16000, padding="max_length", max_length=8000, truncation=True)
    assert cut["input_features"].shape == (2, 80, extractor.num_frames(8000))
    first = extractor(clips[0][:8000], sampling_rate=16000)["input_features"][0]
    assert torch.equal(cut["input_features"][0], first)
    assert cut["attention_mask"].sum(-1).tolist() == [51, extractor.num_frames(4800)]


def test_unpadded_output_is_each_clips_own_frames():
    extractor = RespM2DFeatureExtractor()
    clips = [noise(1.0, seed=1), noise(0.6, seed=2)]
    batch = extractor(clips, sampling_rate=16000)
    for return_tensors, kind in (("np", np.ndarray), (None, np.ndarray), ("pt", torch.Tensor)):
        unpadded = extractor(clips, sampling_rate=16000, padding=False, return_tensors=return_tensors)
        assert [type(item) for item in unpadded["input_features"]] == [kind, kind]
        for row, (features, mask) in enumerate(zip(unpadded["input_features"], unpadded["attention_mask"])):
            frames = int(batch["attention_mask"][row].sum())
            assert features.shape == (80, frames) and mask.shape == (frames,)
            np.testing.assert_array_equal(np.asarray(features), batch["input_features"][row, :, :frames].numpy())


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"padding": "max_length"}, "need max_length"),
        ({"truncation": True}, "need max_length"),
        ({"padding": "sideways"}, "padding='sideways' must be"),
        ({"padding": "max_length", "max_length": 0}, "max_length must be a positive integer"),
        ({"pad_to_multiple_of": 2.5}, "pad_to_multiple_of must be a positive integer"),
        ({"padding": "max_length", "max_length": 4000}, "more than max_length=4000; pass truncation=True"),
        ({"truncation": True, "max_length": 150}, r"max_length=150 is shorter than one frame \(201 samples\)"),
        ({"return_tensors": "tf"}, "return_tensors='tf' is not supported: pass 'pt' \\(torch\\) or 'np'"),
        ({"return_tensors": "torch"}, "return_tensors='torch' is not supported"),
    ],
)
def test_bad_padding_arguments_are_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        RespM2DFeatureExtractor()(noise(0.5), sampling_rate=16000, **arguments)


def test_2d_array_is_a_batch_of_mono_clips_unless_downmixed():
    extractor = RespM2DFeatureExtractor()
    rows = np.stack([noise(0.5, seed=1), noise(0.5, seed=2)])
    as_list = extractor(list(rows), sampling_rate=16000)["input_features"]
    assert torch.equal(extractor(rows, sampling_rate=16000)["input_features"], as_list)
    assert torch.equal(extractor(torch.from_numpy(rows), sampling_rate=16000)["input_features"], as_list)
    mixed = extractor(rows, sampling_rate=16000, downmix=True)["input_features"]
    assert torch.allclose(mixed, extractor(rows.mean(axis=0), sampling_rate=16000)["input_features"], atol=1e-6)
    with pytest.raises(ValueError, match="audio clip 0 is too short.*one per row; pass downmix=True"):
        extractor(rows.T.copy(), sampling_rate=16000)


def dataset_rows(extractor, clips, labels):
    """Rows as `dataset.map(feature_extractor, padding=False)` stores them: nested lists, one clip per row."""
    features = extractor(clips, sampling_rate=16000, padding=False, return_tensors=None)
    return [
        {"input_features": item.tolist(), "attention_mask": mask.tolist(), "label": label}
        for item, mask, label in zip(features["input_features"], features["attention_mask"], labels)
    ]


def test_pad_batches_rows_of_its_own_features():
    extractor = RespM2DFeatureExtractor()
    clips = [noise(0.6, seed=1), noise(1.0, seed=2), noise(0.3, seed=3)]
    rows = dataset_rows(extractor, clips, labels=[1, 0, 1])
    expected = extractor(clips, sampling_rate=16000)
    batch = extractor.pad(rows, return_tensors="pt")
    assert torch.equal(batch["input_features"], expected["input_features"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert batch["label"].tolist() == [1, 0, 1]
    as_dict = extractor.pad({"input_features": [np.asarray(row["input_features"]) for row in rows]})
    np.testing.assert_array_equal(as_dict["input_features"], expected["input_features"].numpy())
    fixed = extractor.pad(rows, padding="max_length", max_length=120, pad_to_multiple_of=16, return_tensors="pt")
    assert fixed["input_features"].shape == (3, 80, 128)
    assert torch.equal(fixed["attention_mask"].sum(-1), expected["attention_mask"].sum(-1))
    cut = extractor.pad(rows, padding="max_length", max_length=50, truncation=True, return_tensors="pt")
    assert torch.equal(cut["input_features"], expected["input_features"][:, :, :50])
    with pytest.raises(ValueError, match=r"input_features 0 has shape \(2, 3\); pad\(\) takes \(80, frames\)"):
        extractor.pad([{"input_features": [[0.0] * 3] * 2}])


def test_left_padding_puts_the_same_frames_after_the_padding_in_calls_pad_and_saved_extractors(tmp_path):
    RespM2DFeatureExtractor(padding_side="left").save_pretrained(tmp_path)
    left, right = RespM2DFeatureExtractor.from_pretrained(tmp_path), RespM2DFeatureExtractor()
    clips = [noise(0.6, seed=1), noise(1.0, seed=2), noise(0.3, seed=3)]
    expected, received = right(clips, sampling_rate=16000), left(clips, sampling_rate=16000)
    total = expected["attention_mask"].shape[1]
    for row, frames in enumerate(expected["attention_mask"].sum(-1).tolist()):
        padding = total - frames
        assert torch.equal(received["input_features"][row, :, padding:], expected["input_features"][row, :, :frames])
        assert torch.all(received["input_features"][row, :, :padding] == left.padding_value)
        assert received["attention_mask"][row].tolist() == [0] * padding + [1] * frames
    rows = dataset_rows(right, clips, labels=[1, 0, 1])
    batch = left.pad(rows, return_tensors="pt")
    assert torch.equal(batch["input_features"], received["input_features"])
    assert torch.equal(batch["attention_mask"], received["attention_mask"])
    fixed = left.pad(rows, padding="max_length", max_length=120, return_tensors="pt")
    assert torch.equal(fixed["input_features"][:, :, -total:], received["input_features"])
    assert fixed["attention_mask"][:, : 120 - total].sum() == 0
    model = RespM2DModel(tiny_config()).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**received).pooler_output, model(**expected).pooler_output, atol=0, rtol=0)


def test_front_end_mismatch_with_the_model_config_is_named():
    config = RespM2DConfig(norm_mean=-5.3, norm_std=3.9)
    RespM2DFeatureExtractor.from_model_config(config).check_matches(config)
    edited = RespM2DFeatureExtractor(mean=-7.1, std=3.9, hop_length=320)
    with pytest.raises(ValueError, match=r"hop_length=320 vs hop_length=160; mean=-7.1 vs norm_mean=-5.3\. .*fix"):
        edited.check_matches(config)


class FakeAudioDecoder:
    """The part of torchcodec's `AudioDecoder` interface that datasets users meet."""

    def __init__(self, data, sample_rate):
        self.data, self.sample_rate = torch.as_tensor(data), sample_rate
        self.metadata = SimpleNamespace(sample_rate=sample_rate, duration_seconds=self.data.shape[-1] / sample_rate)

    def get_all_samples(self):
        return SimpleNamespace(data=self.data, sample_rate=self.sample_rate)


def test_torchcodec_style_decoders_are_decoded_and_resampled():
    extractor = RespM2DFeatureExtractor()
    audio = noise(1.0, rate=8000, seed=3)
    expected = extractor(audio, sampling_rate=8000)["input_features"]
    assert torch.equal(extractor(FakeAudioDecoder(audio[None], 8000))["input_features"], expected)
    batch = extractor([FakeAudioDecoder(audio[None], 8000), noise(0.5)], sampling_rate=16000)["input_features"]
    assert torch.equal(batch[0], expected[0])
    stereo = FakeAudioDecoder(np.stack([audio, 0.5 * audio]), 8000)
    with pytest.raises(ValueError, match="decoder with 2 channels.*downmix=True"):
        extractor(stereo)
    mixed = extractor(stereo, downmix=True)["input_features"]
    assert torch.allclose(mixed, extractor(0.75 * audio, sampling_rate=8000)["input_features"], atol=1e-5)
    with pytest.raises(ValueError, match=r"carries its own sampling rate \(8000 Hz\) but sampling_rate=16000"):
        extractor(FakeAudioDecoder(audio[None], 8000), sampling_rate=16000)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "pad\\(\\) needs 'input_features' of at least one clip"),
        ({"input_features": []}, "pad\\(\\) needs 'input_features' of at least one clip"),
        (
            [{"input_features": np.zeros((80, 5)), "attention_mask": np.ones(9)}],
            r"attention_mask 0 has shape \(9,\) for 5",
        ),
    ],
)
def test_pad_refuses_no_clips_and_masks_of_another_length(rows, message):
    with pytest.raises(ValueError, match=message):
        RespM2DFeatureExtractor().pad(rows)
