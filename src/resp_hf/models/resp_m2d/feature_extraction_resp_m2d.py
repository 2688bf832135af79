"""Log-mel front end of the M2D runtime as a Hugging Face feature extractor."""

import io
import os
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Full-scale values of integer PCM: samples are divided by these to land in [-1, 1).
PCM_SCALES = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


def hz_to_mel_slaney(hz):
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz_slaney(mel):
    """Inverse of `hz_to_mel_slaney`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def check_mel_range(sampling_rate, f_min, f_max):
    """Raises ValueError unless 0 <= f_min < f_max <= the Nyquist frequency (empty mel filters otherwise)."""
    if not 0 <= f_min < f_max <= sampling_rate / 2:
        raise ValueError(
            f"The mel range must satisfy 0 <= f_min < f_max <= sampling_rate / 2 = {sampling_rate / 2:g} Hz, "
            f"got f_min={f_min:g} and f_max={f_max:g}."
        )


def slaney_mel_filter_bank(sampling_rate, n_fft, num_mel_bins, f_min, f_max):
    """Triangular Slaney-scale mel filters with Slaney (area) normalization: (num_mel_bins, n_fft // 2 + 1)."""
    fft_freqs = np.linspace(0.0, sampling_rate / 2.0, n_fft // 2 + 1)
    mel_points = np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), num_mel_bins + 2)
    edges = mel_to_hz_slaney(mel_points)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs[None, :] - lower) / (center - lower)
    falling = (upper - fft_freqs[None, :]) / (upper - center)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (upper - lower)
    return filters.astype(np.float32)


def to_mono_float32(audio, name="audio", downmix=False):
    """Checks one clip and returns it as a 1-D float32 array in [-1, 1] (integer PCM is rescaled)."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.is_floating_point() else audio).numpy()
    audio = np.asarray(audio)
    if audio.dtype in PCM_SCALES:
        audio = audio.astype(np.float32) / np.float32(PCM_SCALES[audio.dtype])
    elif audio.dtype == np.uint8:
        audio = (audio.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(audio.dtype, np.floating):
        audio = audio.astype(np.float32, copy=False)
    else:
        raise ValueError(
            f"{name} has dtype {audio.dtype}; pass float audio in [-1, 1] or integer PCM (int8, uint8, int16, int32)."
        )
    if audio.ndim == 2 and 1 in audio.shape:  # (1, T) or (T, 1): mono whichever axis is time
        audio = audio.reshape(-1)
    if audio.ndim == 2:
        if not downmix:
            raise ValueError(
                f"{name} has shape {audio.shape}: it looks multichannel, but the model takes mono audio. "
                "Pass downmix=True to average the channels (the shorter axis is taken as channels), "
                "or pass a list of 1-D arrays for a batch."
            )
        audio = audio.mean(axis=int(np.argmin(audio.shape)), dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"{name} must be a 1-D waveform, got shape {audio.shape}.")
    if audio.size == 0:
        raise ValueError(f"{name} is empty.")
    if not np.isfinite(audio).all():
        raise ValueError(f"{name} contains NaN or Inf samples.")
    peak = float(np.abs(audio).max())
    if peak > 2.0:
        logger.warning(f"{name} peaks at {peak:.4g}: float audio is expected in [-1, 1] (integer PCM cast to float?).")
    return audio


def resample(audio, orig_sampling_rate, target_sampling_rate):
    """High-quality resampling with soxr (a no-op when the rates agree)."""
    if orig_sampling_rate == target_sampling_rate:
        return audio
    return soxr.resample(audio, orig_sampling_rate, target_sampling_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(source, sampling_rate, downmix=False, name=None):
    """
    Reads audio with soundfile and returns mono float32 at `sampling_rate`.

    `source` is a file path or a binary file-like object (e.g. `io.BytesIO` of encoded bytes); `name` describes it
    in error messages (by default the path).
    """
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"Audio file not found: {source}")
    name = name or f"audio file {source}"
    try:
        audio, file_rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"Could not read {name}: {error}") from error
    if audio.shape[1] == 1 or downmix:  # soundfile reads (frames, channels): average the channels, not a guess
        audio = audio.mean(axis=1, dtype=np.float32)
    audio = to_mono_float32(audio, name=name, downmix=downmix)
    return resample(audio, file_rate, sampling_rate)


def audio_from_dict(value, name="audio"):
    """`(array, sampling_rate)` of a `{"array" (or "raw"), "sampling_rate"}` dict, as datasets and pipelines use."""
    audio = value["array"] if value.get("array") is not None else value.get("raw")
    if audio is None or value.get("sampling_rate") is None:
        raise ValueError(
            f"{name} is a dict with keys {sorted(value)}; expected an 'array' (or 'raw') and its 'sampling_rate'."
        )
    return audio, value["sampling_rate"]


def load_waveform(audio, sampling_rate, target_rate, downmix=False, name="audio"):
    """
    Mono float32 audio at `target_rate` from a file path, encoded bytes, a `{"array", "sampling_rate"}` dict, or an
    array at `sampling_rate` (taken to be `target_rate` when None); `name` describes it in error messages.
    """
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, target_rate, downmix=downmix)
    if isinstance(audio, bytes):
        return load_audio(io.BytesIO(audio), target_rate, downmix=downmix, name=f"the {name} bytes")
    if isinstance(audio, dict):
        audio, sampling_rate = audio_from_dict(audio, name=name)
    return resample(to_mono_float32(audio, name=name, downmix=downmix), sampling_rate or target_rate, target_rate)


def split_batch(inputs):
    """Returns a list of items: a list/tuple of anything but numbers is a batch; anything else is one item."""
    if isinstance(inputs, (list, tuple)) and inputs and not isinstance(inputs[0], (int, float, np.number)):
        return list(inputs)
    return [inputs]


class RespM2DFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns raw mono audio into the normalized log-mel spectrogram of the original M2D runtime.

    Hann-windowed STFT (centered, reflect padding), power 2, Slaney mel filters, `log(mel + eps)` with float32 eps,
    then `(x - mean) / std` with the checkpoint's statistics. Batches are computed in one pass; every clip gets exactly
    the frames it would get alone, and the frames past a clip's end are set to `padding_value` (0.0).

    Args:
        feature_size (`int`, defaults to 80): number of mel bins.
        sampling_rate (`int`, defaults to 16000): sampling rate of the model; other rates are resampled with soxr.
        n_fft, win_length, hop_length (`int`): STFT size, window length and hop in samples.
        f_min, f_max (`float`): mel filterbank range in Hz.
        mean, std (`float`): log-mel normalization statistics of the checkpoint.
        padding_value (`float`, defaults to 0.0): value of padded frames (0 is what the encoder's zero padding expects).
        return_attention_mask (`bool`, defaults to `True`): return the frame-level `attention_mask`.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(
        self,
        feature_size=80,
        sampling_rate=16000,
        n_fft=400,
        win_length=400,
        hop_length=160,
        f_min=50.0,
        f_max=8000.0,
        mean=-7.1,
        std=4.2,
        padding_value=0.0,
        return_attention_mask=True,
        **kwargs,
    ):
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} is longer than n_fft {n_fft}.")
        check_mel_range(sampling_rate, f_min, f_max)
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.f_min = f_min
        self.f_max = f_max
        self.mean = mean
        self.std = std
        self.mel_filters = slaney_mel_filter_bank(sampling_rate, n_fft, feature_size, f_min, f_max)

    @classmethod
    def from_model_config(cls, config):
        """Builds the feature extractor that matches a [`RespM2DConfig`]."""
        return cls(
            feature_size=config.num_mel_bins,
            sampling_rate=config.sampling_rate,
            n_fft=config.n_fft,
            win_length=config.win_length,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            mean=config.norm_mean,
            std=config.norm_std,
        )

    @property
    def min_samples(self):
        """Shortest clip (in samples at the model's rate) the centered STFT can handle."""
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples):
        """Number of log-mel frames the front end makes from `num_samples` samples (centered STFT)."""
        return 1 + (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length

    def __call__(
        self,
        raw_speech,
        sampling_rate=None,
        return_tensors="pt",
        return_attention_mask=None,
        downmix=False,
        device=None,
        **kwargs,
    ):
        """
        Computes normalized log-mel features.

        Args:
            raw_speech (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of those):
                One mono clip, or a list of clips of any lengths. Float audio is taken as is; integer PCM is rescaled.
            sampling_rate (`int`, *optional*):
                Sampling rate of `raw_speech`. Other rates than the model's are resampled; strongly recommended.
            return_tensors (`str`, defaults to `"pt"`): `"pt"` for torch tensors, `"np"` for numpy arrays.
            return_attention_mask (`bool`, *optional*): defaults to the extractor's `return_attention_mask`.
            downmix (`bool`, defaults to `False`): average the channels of 2-D (multichannel) input instead of failing.
            device (`str` or `torch.device`, *optional*): where to compute (e.g. `"cuda"`); `"pt"` outputs stay there.

        Returns:
            [`BatchFeature`] with `input_features` (batch, n_mels, frames) and `attention_mask` (batch, frames).
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}")
        if sampling_rate is None:
            logger.warning(
                f"No sampling_rate given; assuming {self.sampling_rate} Hz. "
                "Pass `sampling_rate` to avoid silent errors."
            )
            sampling_rate = self.sampling_rate
        if not float(sampling_rate).is_integer() or sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate}.")
        clips = split_batch(raw_speech)
        waveforms = [
            self._prepare_clip(clip, index, len(clips), int(sampling_rate), downmix) for index, clip in enumerate(clips)
        ]
        features, attention_mask = self.extract(waveforms, device=device)
        data = {"input_features": features}
        if self.return_attention_mask if return_attention_mask is None else return_attention_mask:
            data["attention_mask"] = attention_mask
        if return_tensors != "pt":
            data = {key: value.cpu().numpy() for key, value in data.items()}
        return BatchFeature(data, tensor_type=return_tensors)

    def _prepare_clip(self, clip, index, batch_size, sampling_rate, downmix):
        name = "audio" if batch_size == 1 else f"audio clip {index}"
        waveform = resample(to_mono_float32(clip, name=name, downmix=downmix), sampling_rate, self.sampling_rate)
        if waveform.size < self.min_samples:
            raise ValueError(
                f"{name} is too short: {waveform.size} samples at {self.sampling_rate} Hz, "
                f"the front end needs at least {self.min_samples}."
            )
        return waveform

    def extract(self, waveforms, device=None):
        """
        Log-mel of a list of checked 1-D float32 waveforms at the model's rate.

        Returns `(features, attention_mask)`: (batch, n_mels, frames) float32 and (batch, frames) int32.
        """
        pad = self.n_fft // 2
        lengths = [len(waveform) for waveform in waveforms]
        padded = torch.zeros(len(waveforms), max(lengths) + 2 * pad, dtype=torch.float32, device=device)
        for row, waveform in zip(padded, waveforms):
            clip = torch.as_tensor(waveform, device=device)[None, None]
            reflected = torch.nn.functional.pad(clip, (pad, pad), mode="reflect")[0, 0]
            row[: reflected.numel()] = reflected
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float32, device=device)
        spectrum = torch.stft(
            padded, self.n_fft, self.hop_length, self.win_length, window, center=False, return_complex=True
        )
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(torch.as_tensor(self.mel_filters, device=device), power)
        features = (torch.log(mel + torch.finfo(torch.float32).eps) - self.mean) / self.std
        frames = torch.tensor([self.num_frames(length) for length in lengths], device=device)
        attention_mask = (torch.arange(features.shape[-1], device=device)[None, :] < frames[:, None]).to(torch.int32)
        features = features.masked_fill(attention_mask[:, None, :] == 0, self.padding_value)
        return features, attention_mask


__all__ = ["RespM2DFeatureExtractor", "audio_from_dict", "load_audio", "load_waveform", "split_batch"]
