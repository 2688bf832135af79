"""Log-mel front end of the M2D runtime as a Hugging Face feature extractor."""

import math

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import PaddingStrategy, logging

from .audio_utils_resp_m2d import check_sampling_rate, describe_source, has_arrays, load_waveform, split_batch
from .configuration_resp_m2d import DEFAULT_NORM_STATS, check_integers, check_mel_range, is_real

logger = logging.get_logger(__name__)

# Frames per STFT call: long recordings never hold the complex spectrum of more than this (about 41 s at 16 kHz).
STFT_BLOCK_FRAMES = 4096
# Front-end settings of the extractor (preprocessor_config.json) and the model config (config.json) that must agree.
MATCHING_SETTINGS = {
    "sampling_rate": "sampling_rate",
    "feature_size": "num_mel_bins",
    "n_fft": "n_fft",
    "win_length": "win_length",
    "hop_length": "hop_length",
    "f_min": "f_min",
    "f_max": "f_max",
    "mean": "norm_mean",
    "std": "norm_std",
}


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


class LogMelOverflowError(ValueError):
    """A clip whose log-mel overflowed float32: `index` is its place in the batch, `peak` its largest |sample|."""

    def __init__(self, name: str, index: int, peak: float):
        super().__init__(
            f"{name} overflows the float32 log-mel: its samples reach {peak:.3g}, but float audio is expected in "
            "[-1, 1]."
        )
        self.index, self.peak = index, peak

    def renamed(self, name: str) -> "LogMelOverflowError":
        """The same error with the clip called `name` (e.g. its place in the caller's input, or its file)."""
        return LogMelOverflowError(name, self.index, self.peak)


def check_finite_features(features, waveforms):
    """Raises `LogMelOverflowError` for the first clip whose log-mel overflowed (samples far outside [-1, 1])."""
    finite = torch.isfinite(features).flatten(1).all(1)
    if not finite.all():
        index = int((~finite).nonzero()[0])
        raise LogMelOverflowError(f"audio clip {index}", index, float(np.abs(waveforms[index]).max()))


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
        padding_side (`str`, defaults to `"right"`): where padded frames go, `"right"` (after each clip) or `"left"`
            (before it); the model reads either.
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
        mean=DEFAULT_NORM_STATS[0],
        std=DEFAULT_NORM_STATS[1],
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
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.f_min = f_min
        self.f_max = f_max
        self.mean = mean
        self.std = std
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={self.padding_side!r} must be 'left' or 'right'.")
        check_integers(self, at_least_one=("feature_size", "n_fft", "win_length", "hop_length"))
        check_sampling_rate(sampling_rate)
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} is longer than n_fft {n_fft}.")
        check_mel_range(sampling_rate, f_min, f_max)
        if not (is_real(mean) and is_real(std) and math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"mean must be finite and std finite and positive, got {mean!r} and {std!r}.")
        if not (is_real(padding_value) and math.isfinite(padding_value)):
            raise ValueError(f"padding_value={padding_value!r} must be a finite number (0.0 for M2D).")
        self.mel_filters = slaney_mel_filter_bank(sampling_rate, n_fft, feature_size, f_min, f_max)

    @classmethod
    def get_feature_extractor_dict(cls, pretrained_model_name_or_path, **kwargs):
        """As Transformers reads it; settings that are not one JSON object are refused, naming the file."""
        settings, kwargs = super().get_feature_extractor_dict(pretrained_model_name_or_path, **kwargs)
        if not isinstance(settings, dict):
            raise ValueError(
                f"preprocessor_config.json in {pretrained_model_name_or_path} must hold one JSON object of settings, "
                f"not a {type(settings).__name__}."
            )
        return settings, kwargs

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

    def check_matches(self, config):
        """
        Raises ValueError when this extractor's front end differs from the model's: preprocessor_config.json and
        config.json are written together, and an edit to one of them would otherwise change embeddings silently.
        """
        mismatches = [
            f"{mine}={getattr(self, mine)!r} vs {theirs}={getattr(config, theirs)!r}"
            for mine, theirs in MATCHING_SETTINGS.items()
            if not math.isclose(float(getattr(self, mine)), float(getattr(config, theirs)), rel_tol=1e-6)
        ]
        if mismatches:
            raise ValueError(
                "The feature extractor (preprocessor_config.json) and the model (config.json) disagree on the front "
                f"end: {'; '.join(mismatches)}. The model was trained with config.json's values: fix "
                "preprocessor_config.json, or use RespM2DFeatureExtractor.from_model_config(model.config)."
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
        raw_speech: np.ndarray | torch.Tensor | list | str | bytes | dict,
        sampling_rate: int | None = None,
        padding: bool | str | PaddingStrategy = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = "pt",
        return_attention_mask: bool | None = None,
        downmix: bool = False,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Computes normalized log-mel features.

        Args:
            raw_speech (`np.ndarray`, `torch.Tensor`, `list[float]`, or a list of clips):
                One mono clip, or a batch: a list of clips of any lengths, or a 2-D array of mono clips (one per row),
                as in Transformers' audio extractors. Float audio is taken as is; integer PCM is rescaled. A clip may
                also be a file path, encoded bytes, a `{"array", "sampling_rate"}` dict or a torchcodec
                `AudioDecoder` (as `datasets` yields); these carry their own rate.
            sampling_rate (`int`, *optional*):
                Sampling rate of array clips; other rates than the model's are resampled. Strongly recommended. Clips
                that carry their own rate must agree with it, unless the batch also has arrays (which it describes).
            padding (`bool` or `str`, defaults to `True`):
                `True` or `"longest"`: pad to the longest clip; `"max_length"`: pad to `max_length`; `False`: return
                each clip's own frames (a list; use `return_tensors=None` or `"np"` for clips of different lengths).
                Padded frames are `padding_value`, after each clip (or before it: `padding_side="left"`), and
                masked out by `attention_mask`.
            max_length (`int`, *optional*): length in samples (at the model's rate) for `"max_length"` padding and
                truncation.
            truncation (`bool`, defaults to `False`): cut clips longer than `max_length` samples.
            pad_to_multiple_of (`int`, *optional*): round the padded length up to a multiple of this many samples.
            return_tensors (`str`, defaults to `"pt"`): `"pt"` for torch tensors, `"np"` or `None` for numpy arrays.
            return_attention_mask (`bool`, *optional*): defaults to the extractor's `return_attention_mask`.
            downmix (`bool`, defaults to `False`): average the channels of multichannel clips instead of failing;
                a 2-D array is then one multichannel clip (channels on its shorter axis), not a batch.
            device (`str` or `torch.device`, *optional*): where to compute (e.g. `"cuda"`); `"pt"` outputs stay there.

        Returns:
            [`BatchFeature`] with `input_features` (batch, n_mels, frames) and `attention_mask` (batch, frames).
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}")
        strategy = padding_strategy(padding, max_length, truncation, pad_to_multiple_of)
        clips = split_batch(raw_speech, downmix=downmix)
        if sampling_rate is not None:
            sampling_rate = check_sampling_rate(sampling_rate)
        elif has_arrays(clips):
            logger.warning(
                f"No sampling_rate given; assuming {self.sampling_rate} Hz. "
                "Pass `sampling_rate` to avoid silent errors."
            )
        # A 2-D array of two-sample rows is more likely one stereo clip than a batch: say so if it is too short.
        hint = " (a 2-D array is a batch of mono clips, one per row; pass downmix=True for one multichannel clip)"
        hint = hint if isinstance(raw_speech, (np.ndarray, torch.Tensor)) and len(clips) > 1 else ""
        rate_of_arrays_only = has_arrays(clips)
        waveforms = [
            self._prepare_clip(clip, index, len(clips), sampling_rate, downmix, rate_of_arrays_only, hint)
            for index, clip in enumerate(clips)
        ]
        if truncation:
            if max_length < self.min_samples:
                raise ValueError(f"max_length={max_length} is shorter than one frame ({self.min_samples} samples).")
            waveforms = [waveform[:max_length] for waveform in waveforms]
        longest = max(len(waveform) for waveform in waveforms)
        target = max_length if strategy == PaddingStrategy.MAX_LENGTH else longest
        if longest > target:
            raise ValueError(
                f"A clip has {longest} samples, more than max_length={max_length}; "
                "pass truncation=True or a larger max_length."
            )
        if pad_to_multiple_of:
            target = math.ceil(target / pad_to_multiple_of) * pad_to_multiple_of
        features, attention_mask = self.extract(waveforms, num_frames=self.num_frames(target), device=device)
        if strategy == PaddingStrategy.DO_NOT_PAD:
            lengths = [self.num_frames(len(waveform)) for waveform in waveforms]
            features = [row[:, :length] for row, length in zip(features, lengths)]
            attention_mask = [row[:length] for row, length in zip(attention_mask, lengths)]
        elif self.padding_side == "left":
            features, attention_mask = padding_to_front(features, attention_mask)
        data = {"input_features": features}
        if self.return_attention_mask if return_attention_mask is None else return_attention_mask:
            data["attention_mask"] = attention_mask
        return as_batch_feature(data, return_tensors)

    def _prepare_clip(self, clip, index, batch_size, sampling_rate, downmix, rate_of_arrays_only, hint):
        name = "audio" if batch_size == 1 else f"audio clip {index}"
        waveform = load_waveform(clip, sampling_rate, self.sampling_rate, downmix, name, rate_of_arrays_only)
        self.check_long_enough(waveform, describe_source(clip, name), hint)
        return waveform

    def check_long_enough(self, waveform: np.ndarray, name: str, hint: str = "") -> None:
        """Refuses a waveform (at the extractor's rate) shorter than one STFT frame needs; `name` describes it."""
        if waveform.size < self.min_samples:
            raise ValueError(
                f"{name} is too short: {waveform.size} samples at {self.sampling_rate} Hz, "
                f"the front end needs at least {self.min_samples}{hint}."
            )

    def extract(self, waveforms, num_frames=0, device=None):
        """
        Log-mel of a list of checked 1-D float32 waveforms at the model's rate, padded to the longest clip or to
        `num_frames` frames if more. The STFT runs `STFT_BLOCK_FRAMES` frames at a time (frames are independent).

        Returns `(features, attention_mask)`: (batch, n_mels, frames) float32 and (batch, frames) int32.
        """
        pad = self.n_fft // 2
        lengths = [len(waveform) for waveform in waveforms]
        padded = torch.zeros(len(waveforms), max(lengths) + 2 * pad, dtype=torch.float32, device=device)
        for row, waveform in zip(padded, waveforms):
            reflect_pad_into(row, torch.as_tensor(waveform, device=device), pad)
        total = self.num_frames(max(lengths))
        features = torch.empty(len(waveforms), self.feature_size, max(total, num_frames), device=device)
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float32, device=device)
        filters = torch.as_tensor(self.mel_filters, device=device)
        for start in range(0, total, STFT_BLOCK_FRAMES):
            stop = min(start + STFT_BLOCK_FRAMES, total)
            samples = padded[:, start * self.hop_length : (stop - 1) * self.hop_length + self.n_fft]
            spectrum = torch.stft(
                samples, self.n_fft, self.hop_length, self.win_length, window, center=False, return_complex=True
            )
            mel = torch.matmul(filters, spectrum.real.square() + spectrum.imag.square())
            features[:, :, start:stop] = (torch.log(mel + torch.finfo(torch.float32).eps) - self.mean) / self.std
        frames = torch.tensor([self.num_frames(length) for length in lengths], device=device)
        attention_mask = (torch.arange(features.shape[-1], device=device)[None, :] < frames[:, None]).to(torch.int32)
        features.masked_fill_(attention_mask[:, None, :] == 0, self.padding_value)
        check_finite_features(features, waveforms)
        return features, attention_mask

    def pad(
        self,
        processed_features,
        padding=True,
        max_length=None,
        truncation=False,
        pad_to_multiple_of=None,
        return_attention_mask=None,
        return_tensors=None,
    ):
        """
        Pads features this extractor made ((n_mels, frames) each, e.g. rows of a dataset mapped with it) along
        time, so that `DataCollatorWithPadding(feature_extractor)` batches clips of different lengths. Lengths here
        are in frames. Other keys (e.g. `label`) are batched as they are.

        Args:
            processed_features: a list of dicts (dataset rows) or a dict of lists, with `input_features` and
                optionally `attention_mask`.
            padding, max_length, truncation, pad_to_multiple_of: as in [`~RespM2DFeatureExtractor.__call__`], in
                frames.
            return_attention_mask (`bool`, *optional*): defaults to the extractor's `return_attention_mask`.
            return_tensors (`str`, *optional*): `"pt"` or `"np"`; by default torch if the features are tensors.
        """
        strategy = padding_strategy(padding, max_length, truncation, pad_to_multiple_of)
        if isinstance(processed_features, (list, tuple)) and processed_features:
            processed_features = {key: [row[key] for row in processed_features] for key in processed_features[0]}
        data = dict(processed_features)
        if "input_features" not in data or len(data["input_features"]) == 0:
            raise ValueError(f"pad() needs 'input_features' of at least one clip, got keys {sorted(data)}.")
        given = data["input_features"]
        is_torch = isinstance(given, torch.Tensor) or (len(given) and isinstance(given[0], torch.Tensor))
        features = [self._checked_features(item, index) for index, item in enumerate(given)]
        given_masks = data.get("attention_mask")
        masks = [
            np.ones(item.shape[1], np.int32) if given_masks is None else np.asarray(given_masks[index], np.int32)
            for index, item in enumerate(features)
        ]
        for index, (item, mask) in enumerate(zip(features, masks)):
            if mask.shape != item.shape[1:]:
                raise ValueError(f"attention_mask {index} has shape {mask.shape} for {item.shape[1]} frames.")
        if truncation:
            features, masks = [item[:, :max_length] for item in features], [mask[:max_length] for mask in masks]
        longest = max(item.shape[1] for item in features)
        target = max_length if strategy == PaddingStrategy.MAX_LENGTH else longest
        if longest > target:
            raise ValueError(f"A clip has {longest} frames, more than max_length={max_length}; pass truncation=True.")
        if pad_to_multiple_of:
            target = math.ceil(target / pad_to_multiple_of) * pad_to_multiple_of
        if strategy != PaddingStrategy.DO_NOT_PAD:
            features = np.stack([pad_frames(item, target, self.padding_value, self.padding_side) for item in features])
            masks = np.stack([pad_frames(mask, target, 0, self.padding_side) for mask in masks])
        data["input_features"] = features
        data.pop("attention_mask", None)
        if self.return_attention_mask if return_attention_mask is None else return_attention_mask:
            data["attention_mask"] = masks
        return as_batch_feature(data, return_tensors or ("pt" if is_torch else "np"))

    def _checked_features(self, item, index):
        """One clip's features as a float32 (n_mels, frames) array; a clear error for anything else."""
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu()
        item = np.asarray(item, dtype=np.float32)
        if item.ndim != 2 or item.shape[0] != self.feature_size:
            raise ValueError(
                f"input_features {index} has shape {item.shape}; pad() takes ({self.feature_size}, frames) features "
                "as this extractor makes them (map the dataset with padding=False, one clip per row)."
            )
        return item


def padding_strategy(padding, max_length, truncation, pad_to_multiple_of):
    """Checks the padding arguments and returns their `PaddingStrategy`."""
    if padding is True:
        padding = PaddingStrategy.LONGEST
    elif padding is False:
        padding = PaddingStrategy.DO_NOT_PAD
    try:
        strategy = PaddingStrategy(padding)
    except ValueError:
        raise ValueError(f"padding={padding!r} must be True, False, 'longest', 'max_length' or 'do_not_pad'.") from None
    for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if (strategy == PaddingStrategy.MAX_LENGTH or truncation) and max_length is None:
        raise ValueError("padding='max_length' and truncation=True need max_length.")
    return strategy


def reflect_pad_into(row, waveform, pad):
    """Writes `waveform` into `row` with `pad` reflected samples on each side (numpy/torch 'reflect' padding)."""
    length = len(waveform)
    row[pad : pad + length] = waveform
    row[:pad] = waveform[1 : pad + 1].flip(0)
    row[pad + length : 2 * pad + length] = waveform[length - pad - 1 : length - 1].flip(0)


def pad_frames(values, frames, value, side="right"):
    """Pads the last axis of `values` to `frames` with `value`, after the values or (`side="left"`) before them."""
    missing = frames - values.shape[-1]
    widths = [(0, 0)] * (values.ndim - 1) + [(missing, 0) if side == "left" else (0, missing)]
    return np.pad(values, widths, constant_values=value)


def padding_to_front(features, attention_mask):
    """Right-padded features (batch, n_mels, frames) and their mask (batch, frames), padded on the left instead."""
    shifts = (attention_mask.shape[-1] - attention_mask.sum(-1)).tolist()
    features = torch.stack([row.roll(shift, -1) for row, shift in zip(features, shifts)])
    return features, torch.stack([row.roll(shift, -1) for row, shift in zip(attention_mask, shifts)])


def as_batch_feature(data, return_tensors):
    """A `BatchFeature` of torch tensors (`"pt"`) or numpy arrays (`"np"` or None); unpadded clips stay a list."""

    if return_tensors not in (None, "np", "pt"):
        raise ValueError(f"return_tensors={return_tensors!r} is not supported: pass 'pt' (torch) or 'np' (numpy).")

    def convert(value):
        if return_tensors == "pt":
            return torch.as_tensor(value)
        return value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

    def is_clip_list(value):
        return isinstance(value, list) and len(value) > 0 and getattr(value[0], "ndim", 0) > 0

    return BatchFeature(
        {key: [*map(convert, value)] if is_clip_list(value) else convert(value) for key, value in data.items()}
    )


__all__ = ["RespM2DFeatureExtractor"]
