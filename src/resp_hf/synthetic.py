"""Synthetic recordings whose classes differ by spectrum: for examples, smoke runs and tests."""

from pathlib import Path

import numpy as np
import soundfile


def low_band_noise(rng, seconds, sampling_rate=16000, cutoff=600.0):
    """Breath-like noise: white noise with everything above `cutoff` Hz removed."""
    noise = rng.standard_normal(int(seconds * sampling_rate))
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(noise.size, 1 / sampling_rate) > cutoff] = 0
    return np.fft.irfft(spectrum, noise.size)


def high_band_tone(rng, seconds, sampling_rate=16000, band=(2000.0, 4000.0)):
    """Wheeze-like tone at a random frequency in `band` Hz, with a little noise."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return np.sin(2 * np.pi * rng.uniform(*band) * t) + 0.05 * rng.standard_normal(t.size)


def write_two_class_recordings(folder, per_class, seed=0, sampling_rate=16000, seconds=(1.0, 2.5)):
    """
    Writes `folder/breath/*.wav` (low-band noise) and `folder/wheeze/*.wav` (high-band tones), `per_class` each,
    with random durations in `seconds`: the `<class>/<files>` layout that `resp-hf finetune` reads.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for name, make in (("breath", low_band_noise), ("wheeze", high_band_tone)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            audio = make(rng, rng.uniform(*seconds), sampling_rate)
            audio = (0.3 * audio / np.abs(audio).max()).astype(np.float32)
            soundfile.write(folder / name / f"{name}_{index:03d}.wav", audio, sampling_rate)
    return folder


def save_small_encoder(folder, seed=0):
    """A small random encoder (2 layers, width 64) with its feature extractor: a stand-in for demos and smoke runs."""
    import torch

    from .models.resp_m2d import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel

    torch.manual_seed(seed)
    config = RespM2DConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    RespM2DModel(config).save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(config).save_pretrained(folder)
    return Path(folder)
