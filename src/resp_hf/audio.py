"""Reading audio columns of Hugging Face datasets with soundfile and soxr, without torchcodec."""

import io
import numbers
import os

from datasets import Audio, DatasetDict

from .models.resp_m2d.feature_extraction_resp_m2d import load_audio, resample, to_mono_float32


def check_sampling_rate(sampling_rate, name="sampling_rate"):
    """Returns `sampling_rate` as an int, or raises ValueError when it is not a positive integer."""
    is_number = isinstance(sampling_rate, numbers.Real) and not isinstance(sampling_rate, bool)
    if not is_number or not float(sampling_rate).is_integer() or sampling_rate <= 0:
        raise ValueError(f"{name} must be a positive integer, got {sampling_rate!r}.")
    return int(sampling_rate)


def decode_array_dict(value, sampling_rate, downmix):
    """Decodes an already-decoded `{"array", "sampling_rate"}` dict: checks, downmixes and resamples the array."""
    source_rate = value.get("sampling_rate")
    if source_rate is None:
        raise ValueError("Audio dict has an 'array' but no 'sampling_rate'; the rate is needed to resample.")
    source_rate = check_sampling_rate(source_rate, name="The audio dict's 'sampling_rate'")
    audio = to_mono_float32(value["array"], name=describe_audio(value.get("path")), downmix=downmix)
    return resample(audio, source_rate, sampling_rate)


def decode_bytes(data, path, sampling_rate, downmix):
    """Decodes encoded audio bytes (WAV, FLAC, ...) with soundfile; `path` only names the source in errors."""
    return load_audio(
        io.BytesIO(data), sampling_rate, downmix=downmix, name=f"the audio bytes of {describe_audio(path)}"
    )


def describe_audio(path):
    """Names an audio source in messages: its path when known."""
    return "audio" if path is None else f"audio {os.fspath(path)!r}"


def decode_audio(value, sampling_rate=16000, downmix=False):
    """
    Decodes one audio value of a dataset into a mono float32 array at `sampling_rate`.

    `value` is a file path (`str` or `os.PathLike`), a decoded `{"array", "sampling_rate"}` dict, or an encoded
    `{"bytes", "path"}` dict as yielded by `datasets.Audio(decode=False)` (bytes are preferred when present).
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    if isinstance(value, (str, os.PathLike)):
        return load_audio(value, sampling_rate, downmix=downmix)
    if not isinstance(value, dict):
        raise TypeError(
            f"Cannot decode audio from a {type(value).__name__}; expected a file path, "
            "a dict with 'array' and 'sampling_rate', or a dict with 'bytes' and/or 'path'."
        )
    if value.get("array") is not None:
        return decode_array_dict(value, sampling_rate, downmix)
    if value.get("bytes") is not None:
        return decode_bytes(value["bytes"], value.get("path"), sampling_rate, downmix)
    if value.get("path") is not None:
        return load_audio(value["path"], sampling_rate, downmix=downmix)
    raise ValueError(
        f"Audio dict has no usable audio: found keys {sorted(value)} (with None values ignored); "
        "expected 'array' with 'sampling_rate', 'bytes', or 'path'."
    )


def source_path(value):
    """The original file path of an audio value, or None when it has none."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, dict):
        return value.get("path")
    return None


def make_decode_transform(column, sampling_rate, downmix):
    """Builds a `with_transform` function that decodes `column` of a batch (dict of lists) and keeps the rest."""

    def decode_batch(batch):
        if column not in batch:
            return batch
        decoded = [
            {
                "array": decode_audio(value, sampling_rate=sampling_rate, downmix=downmix),
                "sampling_rate": sampling_rate,
                "path": source_path(value),
            }
            for value in batch[column]
        ]
        return {**batch, column: decoded}

    return decode_batch


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
    return dataset.with_transform(make_decode_transform(column, sampling_rate, downmix))


__all__ = ["decode_audio", "decode_audio_column"]
