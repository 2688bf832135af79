"""
Audio input of RespM2D models: decoding files, bytes, dicts, arrays and torchcodec-style decoders into mono float32
at the model's rate (soundfile reads, soxr resamples). The only place the package decodes audio; travels as remote
code next to the model.
"""

import io
import math
import numbers
import os
import struct
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

# Full-scale values of integer PCM: samples are divided by these to land in [-1, 1).
PCM_SCALES = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}
# Upsampling more than this (e.g. a corrupt header saying 1 Hz) is refused before soxr allocates the output.
MAX_UPSAMPLING = 16
# Multichannel files are read and downmixed this many frames at a time, so the channels are never all in memory.
READ_BLOCK_FRAMES = 1 << 20
# A WAV data chunk size that streaming writers leave as "unknown".
UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)


def check_sampling_rate(sampling_rate, name="sampling_rate"):
    """Returns `sampling_rate` as an int; raises ValueError unless it is a positive integer-like number."""
    is_number = isinstance(sampling_rate, numbers.Real) and not isinstance(sampling_rate, (bool, np.bool_))
    if not is_number or not math.isfinite(sampling_rate) or sampling_rate <= 0 or sampling_rate != int(sampling_rate):
        raise ValueError(f"{name} must be a positive integer, got {sampling_rate!r} (a rate in Hz, e.g. 16000).")
    return int(sampling_rate)


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
    peak = max(abs(float(audio.max())), abs(float(audio.min())))  # NaN and Inf propagate: no temporary copies
    if not math.isfinite(peak):
        raise ValueError(f"{name} contains NaN or Inf samples.")
    if peak > 2.0:
        from transformers.utils import logging

        logging.get_logger(__name__).warning(
            f"{name} peaks at {peak:.4g}: float audio is expected in [-1, 1] (integer PCM cast to float?)."
        )
    return audio


def resample(audio, orig_sampling_rate, target_sampling_rate, name="audio"):
    """High-quality resampling with soxr (a no-op when the rates agree); absurd upsampling is refused first."""
    if orig_sampling_rate == target_sampling_rate:
        return audio
    if target_sampling_rate > MAX_UPSAMPLING * orig_sampling_rate:
        output_samples = math.ceil(len(audio) * target_sampling_rate / orig_sampling_rate)
        raise ValueError(
            f"{name} is at {orig_sampling_rate} Hz: resampling it to {target_sampling_rate} Hz would make "
            f"{output_samples:,} samples ({output_samples * 4 / 2**30:.1f} GiB). Rates below "
            f"{target_sampling_rate / MAX_UPSAMPLING:g} Hz are refused; check the file header or sampling_rate."
        )
    return soxr.resample(audio, orig_sampling_rate, target_sampling_rate, quality="HQ").astype(np.float32, copy=False)


def wav_data_sizes(stream):
    """
    `(declared, available)` byte sizes of a RIFF/WAVE file's data chunk (the header's claim and what the file holds),
    or None when `stream` is not a WAV with a known data size. The stream position is restored.
    """
    start = stream.tell()
    try:
        header = stream.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        while True:
            chunk = stream.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                if size in UNKNOWN_WAV_SIZES:
                    return None
                data_start = stream.tell()
                available = stream.seek(0, io.SEEK_END) - data_start
                return size, available
            stream.seek(size + size % 2, io.SEEK_CUR)  # chunks are padded to an even size
    finally:
        stream.seek(start)


def check_not_truncated(stream, name):
    """Raises ValueError when a WAV's data chunk is shorter than its header says (libsndfile would read less)."""
    sizes = wav_data_sizes(stream)
    if sizes is not None and sizes[1] < sizes[0]:
        declared, available = sizes
        raise ValueError(
            f"{name} is truncated: its header promises {declared:,} bytes of audio but only {available:,} "
            f"({available / declared:.0%}) are there; re-copy or re-export the file."
        )


def read_audio_file(source, name, downmix=False):
    """
    Reads a binary file-like object with soundfile: `(mono float32 array, sampling rate)`. Multichannel
    audio is downmixed block by block (only with `downmix=True`); truncated files are refused.
    """
    if source.seekable():
        check_not_truncated(source, name)
    try:
        with soundfile.SoundFile(source) as sound:
            if sound.channels > 1 and not downmix:
                raise ValueError(
                    f"{name} has {sound.channels} channels: it is multichannel, but the model takes mono audio. "
                    "Pass downmix=True to average the channels."
                )
            audio = np.empty(sound.frames, dtype=np.float32)
            filled = 0
            for block in sound.blocks(READ_BLOCK_FRAMES, dtype="float32", always_2d=True):
                audio[filled : filled + len(block)] = block.mean(axis=1) if sound.channels > 1 else block[:, 0]
                filled += len(block)
            rate = sound.samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"Could not read {name}: {error}") from error
    if filled < len(audio):
        raise ValueError(
            f"{name} is truncated: its header promises {len(audio):,} frames but only {filled:,} are there."
        )
    return audio, rate


def check_file(path):
    """The path as a `Path`; FileNotFoundError naming it when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Audio file not found: {path}")
    return path


def load_audio(source, sampling_rate, downmix=False, name=None):
    """
    Reads audio with soundfile and returns mono float32 at `sampling_rate`.

    `source` is a file path or a binary file-like object (e.g. `io.BytesIO` of encoded bytes); `name` describes it
    in error messages (by default the path).
    """
    if isinstance(source, (str, os.PathLike)):
        source = check_file(source)
        name = name or f"audio file {source}"
        with open(source, "rb") as stream:
            audio, file_rate = read_audio_file(stream, name, downmix)
    else:
        name = name or "the audio stream"
        audio, file_rate = read_audio_file(source, name, downmix)
    audio = to_mono_float32(audio, name=name)
    return resample(audio, file_rate, sampling_rate, name=name)


def is_audio_decoder(audio):
    """Whether `audio` is a torchcodec `AudioDecoder` (or an object with its interface), as `datasets` 4+ yields."""
    return callable(getattr(audio, "get_all_samples", None))


def decoder_samples(decoder, downmix, name):
    """`(array, rate)` of a torchcodec-style decoder: its (channels, samples) data, averaged over channels if asked."""
    samples = decoder.get_all_samples()
    data = torch.as_tensor(samples.data)
    if data.ndim == 2 and data.shape[0] > 1 and not downmix:
        raise ValueError(
            f"{name} is a decoder with {data.shape[0]} channels, but the model takes mono audio; "
            "pass downmix=True to average the channels."
        )
    if data.ndim == 2:  # one channel stays as it is (integer PCM is rescaled later); several are averaged
        data = data[0] if data.shape[0] == 1 else data.float().mean(dim=0)
    return data, check_sampling_rate(samples.sample_rate, name=f"the sample_rate of {name}")


def check_own_rate(own_rate, sampling_rate, name):
    """Files, bytes, dicts and decoders carry their own rate: a `sampling_rate` passed with them must agree."""
    if sampling_rate is not None and sampling_rate != own_rate:
        raise ValueError(
            f"{name} carries its own sampling rate ({own_rate} Hz) but sampling_rate={sampling_rate} was passed: "
            "drop sampling_rate (it is the rate of array inputs) or pass audio at that rate."
        )


def carries_own_rate(audio):
    """Whether a clip brings its own sampling rate (files, bytes, dicts, decoders), unlike a bare array."""
    return isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview, dict)) or is_audio_decoder(audio)


def describe_source(value, name):
    """Names an audio value in messages: its path when it has one."""
    path = value.get("path") if isinstance(value, dict) else None
    return name if path is None else f"{name} {os.fspath(path)!r}"


def load_waveform(audio, sampling_rate, target_rate, downmix=False, name="audio", rate_of_arrays_only=False):
    """
    Mono float32 audio at `target_rate` from one clip: a file path, encoded bytes, a dict (`{"array",
    "sampling_rate"}` as decoded by datasets, or `{"bytes", "path"}` as with `Audio(decode=False)`, bytes preferred),
    a torchcodec-style decoder, or an array at `sampling_rate` (taken to be `target_rate` when None); `name`
    describes the clip in errors. Files, bytes, dicts and decoders carry their own rate: a `sampling_rate` given
    with them must agree with it, unless `rate_of_arrays_only` (a batch that also has arrays, which it describes).
    """
    if sampling_rate is not None:
        sampling_rate = check_sampling_rate(sampling_rate)
    if carries_own_rate(audio) and rate_of_arrays_only:
        sampling_rate = None
    if isinstance(audio, (str, os.PathLike)):
        path = check_file(audio)
        check_own_rate(file_rate(path, f"audio file {path}"), sampling_rate, f"audio file {path}")
        return load_audio(path, target_rate, downmix=downmix)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return load_bytes(bytes(audio), sampling_rate, target_rate, downmix, f"the {name} bytes")
    if is_audio_decoder(audio):
        audio, own_rate = decoder_samples(audio, downmix, name)
        check_own_rate(own_rate, sampling_rate, name)
        return resample(to_mono_float32(audio, name=name), own_rate, target_rate, name=name)
    if isinstance(audio, dict):
        return load_dict(audio, sampling_rate, target_rate, downmix, name)
    audio = to_mono_float32(audio, name=name, downmix=downmix)
    return resample(audio, sampling_rate or target_rate, target_rate, name=name)


def has_arrays(clips):
    """Whether some clips are bare arrays: then a `sampling_rate` describes those, not the clips with a rate."""
    return not all(carries_own_rate(clip) for clip in clips)


def load_bytes(data, sampling_rate, target_rate, downmix, name):
    """Decodes encoded audio bytes (WAV, FLAC, OGG, MP3); they carry their own rate."""
    stream = io.BytesIO(data)
    check_own_rate(file_rate(stream, name), sampling_rate, name)
    return load_audio(stream, target_rate, downmix=downmix, name=name)


def load_dict(value, sampling_rate, target_rate, downmix, name):
    """Decodes a `{"array", "sampling_rate"}` or `{"bytes", "path"}` dict (None values are ignored)."""
    name = describe_source(value, name)
    if value.get("array") is not None or value.get("raw") is not None:
        array = value["array"] if value.get("array") is not None else value["raw"]
        if value.get("sampling_rate") is None:
            raise ValueError(
                f"{name} is a dict with keys {sorted(value)} and no 'sampling_rate'; an 'array' needs its rate."
            )
        own_rate = check_sampling_rate(value["sampling_rate"], name=f"the 'sampling_rate' of {name}")
        check_own_rate(own_rate, sampling_rate, name)
        return resample(to_mono_float32(array, name=name, downmix=downmix), own_rate, target_rate, name=name)
    if value.get("bytes") is not None:
        return load_bytes(value["bytes"], sampling_rate, target_rate, downmix, f"the audio bytes of {name}")
    if value.get("path") is not None:
        return load_waveform(value["path"], sampling_rate, target_rate, downmix)
    raise ValueError(
        f"{name} is a dict with no usable audio: found keys {sorted(value)} (None values ignored); expected "
        "'array' with 'sampling_rate', 'bytes', or 'path'."
    )


def file_rate(source, name):
    """Sampling rate in a file's header (path or file-like), without decoding the audio."""
    return sound_info(source, name).samplerate


def sound_info(source, name):
    """soundfile's header information of a path or file-like object, with a clear error when it is not audio."""
    try:
        position = source.tell() if hasattr(source, "tell") else None
        info = soundfile.info(source)
        if position is not None:
            source.seek(position)
        return info
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"Could not read {name}: {error}") from error


def item_duration(audio, sampling_rate, name="audio"):
    """Duration in seconds of one clip, from the file header where there is one (nothing is decoded)."""
    if isinstance(audio, (str, os.PathLike)):
        path = check_file(audio)
        return sound_info(str(path), f"audio file {path}").duration
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return sound_info(io.BytesIO(bytes(audio)), f"the {name} bytes").duration
    if is_audio_decoder(audio):
        metadata = getattr(audio, "metadata", None)
        duration = getattr(metadata, "duration_seconds", None)
        return duration if duration is not None else 0.0  # unknown: sorting only, decoded later
    if isinstance(audio, dict):
        if audio.get("array") is not None and audio.get("sampling_rate"):
            return len(audio["array"]) / check_sampling_rate(audio["sampling_rate"], f"the 'sampling_rate' of {name}")
        if audio.get("bytes") is not None:
            return item_duration(audio["bytes"], None, name)
        if audio.get("path") is not None:
            return item_duration(audio["path"], None, name)
        return 0.0  # load_waveform names the problem
    if sampling_rate is None:
        raise ValueError(f"{name} is an array: pass `sampling_rate` for array inputs.")
    return len(audio) / check_sampling_rate(sampling_rate)


def split_batch(inputs, downmix=False):
    """
    The clips of `inputs`: a list or tuple of anything but numbers is a batch, a 2-D array or tensor is a batch of
    mono clips (one per row) unless `downmix=True` makes it one multichannel clip; anything else is one clip. A
    (samples, 1) column, as soundfile reads mono files, is one clip (one-sample clips cannot be embedded).
    """
    if isinstance(inputs, (list, tuple)) and inputs and not isinstance(inputs[0], numbers.Number):
        return list(inputs)
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 2 and inputs.shape[1] > 1 and not downmix:
        return list(inputs)
    return [inputs]


__all__ = [
    "carries_own_rate",
    "check_sampling_rate",
    "has_arrays", "item_duration", "load_audio", "load_waveform", "split_batch", "to_mono_float32"]
