"""What `RespM2DModel.embed()` accepts: bytes, decoders, 2-D batches, and the checks on rates and front ends."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import soxr
import torch
from conftest import noise, tiny_model

from resp_hf import RespM2DFeatureExtractor


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def encoded(audio, rate, tmp_path, name="clip.wav"):
    path = tmp_path / name
    soundfile.write(path, audio, rate, subtype="FLOAT")
    return path


def test_encoded_bytes_are_decoded_with_their_own_rate(model, tmp_path):
    audio = noise(1.2, rate=8000, seed=1)
    path = encoded(audio, 8000, tmp_path)
    expected = model.embed(soxr.resample(audio, 8000, 16000, quality="HQ"), sampling_rate=16000)
    torch.testing.assert_close(model.embed(path.read_bytes()), expected, atol=0, rtol=0)
    torch.testing.assert_close(model.embed(str(path)), expected, atol=0, rtol=0)
    torch.testing.assert_close(model.embed(path.read_bytes(), sampling_rate=8000), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"the audio bytes carries its own sampling rate \(8000 Hz\) but"):
        model.embed(path.read_bytes(), sampling_rate=16000)
    with pytest.raises(ValueError, match=r"clip.wav carries its own sampling rate \(8000 Hz\)"):
        model.embed([str(path), path.read_bytes()], sampling_rate=16000)
    # Beside arrays, sampling_rate is theirs: the file keeps its own rate.
    mixed = model.embed([str(path), soxr.resample(audio, 8000, 16000, quality="HQ")], sampling_rate=16000)
    torch.testing.assert_close(mixed, expected.expand(2, -1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="Could not read the Input 1 bytes"):
        model.embed([str(path), b"not audio"])


def test_torchcodec_style_decoders_are_embedded(model):
    audio = noise(1.0, rate=8000, seed=2)
    decoder = SimpleNamespace(
        get_all_samples=lambda: SimpleNamespace(data=torch.from_numpy(audio[None]), sample_rate=8000),
        metadata=SimpleNamespace(sample_rate=8000),
    )
    expected = model.embed(audio, sampling_rate=8000)
    torch.testing.assert_close(model.embed(decoder), expected, atol=0, rtol=0)
    torch.testing.assert_close(model.embed([decoder, audio], sampling_rate=8000), expected.expand(2, -1))


def test_a_2d_array_is_a_batch_of_clips(model):
    rows = np.stack([noise(0.8, seed=4), noise(0.8, seed=5)])
    torch.testing.assert_close(model.embed(rows, sampling_rate=16000), model.embed(list(rows), sampling_rate=16000))


@pytest.mark.parametrize("rate", ["16000", True, 0, -1, float("nan"), float("inf"), 22050.5, 10**400, 10**8])
def test_bad_sampling_rates_are_clear_errors(model, rate):
    with pytest.raises(ValueError, match="sampling_rate must be a positive integer, got"):
        model.embed(noise(0.5), sampling_rate=rate)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
        ({"batch_size": 1.5}, "batch_size must be a positive integer, got 1.5"),
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
        ({"layer": "x"}, r"layers=\['x'\]: this encoder has layers 0..1"),
        ({"layer": True}, r"layers=\[True\]: this encoder has layers 0..1"),
        ({"feature_extractor": "nope"}, "feature_extractor must be a RespM2DFeatureExtractor, got str"),
    ],
)
def test_bad_arguments_are_clear_errors(model, arguments, message):
    with pytest.raises(ValueError, match=message):
        model.embed([noise(0.5)], sampling_rate=16000, **arguments)


def test_a_too_short_clip_is_named_by_its_input_index_and_file(model, tmp_path):
    soundfile.write(tmp_path / "blip.wav", noise(0.5)[:50], 16000)
    clips = [noise(2.0), noise(3.0), str(tmp_path / "blip.wav"), noise(1.5)]  # batched shortest first
    with pytest.raises(ValueError, match="Input 2 '.*blip.wav' is too short: 50 samples"):
        model.embed(clips, sampling_rate=16000)
    with pytest.raises(ValueError, match="Input 1 is too short: 100 samples"):
        model.embed([noise(2.0), noise(1.0)[:100]], sampling_rate=16000)


@pytest.mark.parametrize("clips", [None, [None], [noise(0.5), None], 3.0j])
def test_inputs_that_are_not_audio_are_named(model, clips):
    with pytest.raises(ValueError, match=r"(audio|Input 1) is a (NoneType|complex): expected an array, a file path"):
        model.embed(clips, sampling_rate=16000)


def test_a_generator_of_clips_is_a_batch(model):
    clips = [noise(0.5, seed=seed) for seed in range(3)]
    torch.testing.assert_close(
        model.embed((clip for clip in clips), sampling_rate=16000), model.embed(clips, sampling_rate=16000)
    )


def test_a_feature_extractor_that_disagrees_with_the_config_is_refused(model):
    edited = RespM2DFeatureExtractor.from_model_config(model.config)
    edited.mean += 2.0
    with pytest.raises(ValueError, match=r"disagree on the front end: mean=-3.0 vs norm_mean=-5.0"):
        model.embed(noise(0.5), sampling_rate=16000, feature_extractor=edited)


def test_truncated_wav_bytes_are_named_not_embedded(model, tmp_path):
    buffer = io.BytesIO()
    soundfile.write(buffer, noise(1.0), 16000, format="WAV", subtype="PCM_16")
    with pytest.raises(ValueError, match="the audio bytes is truncated"):
        model.embed(buffer.getvalue()[:20000])


def test_an_overflowing_clip_is_named_by_its_input_index_not_its_place_in_a_batch(model, tmp_path):
    loud = noise(1.0) * np.float32(1e30)
    with pytest.raises(ValueError, match=r"^Input 1 overflows the float32 log-mel: its samples reach") as error:
        model.embed([noise(4.0), loud], sampling_rate=16000)  # batched shortest first: loud is the batch's clip 0
    assert len(str(error.value).splitlines()) == 1
    soundfile.write(tmp_path / "loud.wav", loud, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"^Input 3 '.*loud.wav' overflows the float32 log-mel"):
        model.embed([noise(3.0), noise(2.0), noise(2.5), str(tmp_path / "loud.wav")], sampling_rate=16000, batch_size=2)


def test_a_non_finite_embedding_is_an_error_naming_the_clip(model):
    broken = tiny_model(seed=3)
    with torch.no_grad():  # finite weights whose products overflow float32
        broken.encoder.layer[0].mlp.fc2.weight.fill_(1e30)
    with pytest.raises(ValueError, match=r"^The layer-1 embedding of Input 0 holds NaN or Inf: the model's weights"):
        broken.embed([noise(1.0), noise(2.0)], sampling_rate=16000)
    assert torch.isfinite(model.embed([noise(1.0), noise(2.0)], sampling_rate=16000)).all()


def test_the_feature_extractor_of_a_folders_remote_code_is_accepted(model, tmp_path):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model.save_pretrained(tmp_path)
    RespM2DFeatureExtractor.from_model_config(model.config).save_pretrained(tmp_path)
    # What AutoFeatureExtractor(trust_remote_code=True) loads where resp_hf is not imported: the folder's own copy.
    remote_class = get_class_from_dynamic_module("feature_extraction_resp_m2d.RespM2DFeatureExtractor", str(tmp_path))
    assert remote_class is not RespM2DFeatureExtractor
    remote = remote_class.from_pretrained(tmp_path)
    clip = noise(1.5)
    expected = model.embed(clip, sampling_rate=16000)
    torch.testing.assert_close(model.embed(clip, sampling_rate=16000, feature_extractor=remote), expected)
    with pytest.raises(ValueError, match="feature_extractor must be a RespM2DFeatureExtractor, got SimpleNamespace"):
        model.embed(clip, sampling_rate=16000, feature_extractor=SimpleNamespace(sampling_rate=16000))
