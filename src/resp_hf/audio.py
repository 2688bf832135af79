"""Reading audio columns of Hugging Face datasets with soundfile and soxr, without torchcodec."""

import math
import os
from dataclasses import dataclass
from functools import lru_cache

from datasets import Audio, DatasetDict

from .models.resp_m2d.audio_utils_resp_m2d import carries_own_rate, check_sampling_rate, load_waveform

SEGMENT_KEYS = ("path", "start", "end")
MAX_WINDOW_SECONDS = 3600.0  # a fitted clip is an array of that many seconds, for every row


def check_window_seconds(seconds: float) -> None:
    """Refuses a clip length that is not a positive finite number of seconds up to an hour."""
    if not (isinstance(seconds, (int, float)) and 0 < seconds <= MAX_WINDOW_SECONDS):
        raise ValueError(f"seconds must be a number of seconds in (0, {MAX_WINDOW_SECONDS:g}], got {seconds!r}.")


def decode_audio(value, sampling_rate=16000, downmix=False):
    """
    Decodes one audio value of a dataset into a mono float32 array at `sampling_rate`.

    `value` is a file path (`str` or `os.PathLike`), encoded bytes, a decoded `{"array", "sampling_rate"}` dict, an
    encoded `{"bytes", "path"}` dict as yielded by `datasets.Audio(decode=False)` (bytes are preferred when present),
    a segment `{"path", "start", "end"}` dict (seconds; see `decode_segment`), or a torchcodec `AudioDecoder` as
    `datasets` 4+ yields where torchcodec is installed.
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    if is_segment(value):
        return decode_segment(value["path"], value["start"], value["end"], sampling_rate, downmix)
    if not carries_own_rate(value):
        raise TypeError(
            f"Cannot decode audio from a {type(value).__name__}; expected a file path, encoded bytes, a dict with "
            "'array' and 'sampling_rate', a dict with 'bytes' and/or 'path', a dict with 'path', 'start' and 'end', "
            "or an AudioDecoder."
        )
    return load_waveform(value, None, sampling_rate, downmix=downmix)


def is_segment(value):
    """Whether `value` is a `{"path", "start", "end"}` segment of a recording (as the ICBHI and SPRSound tasks hold)."""
    return isinstance(value, dict) and all(value.get(key) is not None for key in SEGMENT_KEYS)


@lru_cache(maxsize=1024)
def _decoded_recording(path, sampling_rate, downmix):
    """
    A whole recording at `sampling_rate`, cached: each recording is decoded and resampled once, however many segments
    it has and however many epochs read them (all 920 ICBHI recordings take about 1.3 GB at 16 kHz). Files are
    assumed not to change while the process runs.
    """
    audio = load_waveform(path, None, sampling_rate, downmix=downmix)
    audio.setflags(write=False)
    return audio


def segment_bounds(start, end, sampling_rate, num_samples):
    """Sample indices of `[start, end)` seconds, as the ICBHI recipe computes them (`int(t * rate)`, clipped)."""
    first = min(int(start * sampling_rate), num_samples)
    last = min(int(end * sampling_rate), num_samples)
    return first, last


def segment_problem(start: float, end: float, duration: float) -> str | None:
    """
    Why a segment of a `duration`-second file cannot be read (None when it can): a time that is not a finite,
    non-negative number, zero or negative length, or starting after the file ends. One ending after the file is
    readable (clipped to the file).
    """
    if not (math.isfinite(start) and math.isfinite(end) and start >= 0):
        return f"times must be finite and non-negative ({start} to {end} s)"
    if end <= start:
        return f"zero or negative length ({start} to {end} s)"
    if start >= duration:
        return f"starts at {start} s, after the end of the file ({duration:.3f} s)"
    return None


def decode_segment(path, start, end, sampling_rate=16000, downmix=False):
    """
    The `[start, end)` seconds of a recording at `sampling_rate`: the whole file is decoded and resampled first, then
    sliced, as in the ICBHI recipe (resampling a short slice alone would differ at its edges). Bounds that
    `segment_problem` refuses are an error naming the file.
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    recording = _decoded_recording(os.fspath(path), sampling_rate, downmix)
    problem = segment_problem(start, end, len(recording) / sampling_rate)
    if problem:
        raise ValueError(f"Cannot read a segment of {path}: {problem}.")
    first, last = segment_bounds(start, end, sampling_rate, len(recording))
    if last <= first:
        raise ValueError(f"Segment {start} to {end} s of {path} is shorter than one sample at {sampling_rate} Hz.")
    return recording[first:last].copy()


def source_path(value):
    """The original file path of an audio value, or None when it has none."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, dict):
        return value.get("path")
    return None


@dataclass(frozen=True)
class AudioColumnDecoder:
    """
    The `with_transform` function of `decode_audio_column`: decodes `column` of a batch (dict of lists), keeps the rest.

    A class rather than a closure so that datasets fingerprints it by reference and its fields; a closure makes dill
    walk the globals of everything `decode_audio` reaches, which takes minutes once many modules are imported.
    """

    column: str
    sampling_rate: int
    downmix: bool

    def __call__(self, batch: dict) -> dict:
        if self.column not in batch:
            return batch
        decoded = [
            {
                "array": decode_audio(value, sampling_rate=self.sampling_rate, downmix=self.downmix),
                "sampling_rate": self.sampling_rate,
                "path": source_path(value),
            }
            for value in batch[self.column]
        ]
        return {**batch, self.column: decoded}


def decode_audio_column(dataset, column="audio", sampling_rate=16000, downmix=False):
    """
    Returns `dataset` (a `Dataset` or `DatasetDict`) with `column` decoded lazily on access by soundfile and soxr.

    Each accessed row's `column` becomes `{"array": float32 mono, "sampling_rate": sampling_rate, "path": ...}`;
    an `Audio` column is first cast to `Audio(decode=False)` so that datasets does not need torchcodec.
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {split: decode_audio_column(part, column, sampling_rate, downmix) for split, part in dataset.items()}
        )
    if column not in dataset.column_names:
        raise ValueError(f"Column {column!r} not found in the dataset; available columns: {dataset.column_names}.")
    if isinstance(dataset.features[column], Audio):
        dataset = dataset.cast_column(column, Audio(decode=False))
    return dataset.with_transform(AudioColumnDecoder(column, sampling_rate, downmix))


__all__ = ["decode_audio", "decode_audio_column", "decode_segment", "segment_problem"]
