"""
Audio input of RespM2D models: decoding files, bytes, dicts, arrays and torchcodec-style decoders into mono float32
at the model's rate (soundfile reads, soxr resamples). The only place the package decodes audio; travels as remote
code next to the model.
"""

import functools
import io
import math
import numbers
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

# Full-scale values of integer PCM: samples are divided by these to land in [-1, 1).
PCM_SCALES = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}
# Rates above this (in Hz) are corrupt headers or mistakes; ultrasound recorders stop well below it.
MAX_SAMPLING_RATE = 10_000_000
# Upsampling more than this (e.g. a corrupt header saying 1 Hz) is refused before soxr allocates the output.
MAX_UPSAMPLING = 16
# Multichannel files are read and downmixed this many frames at a time, so the channels are never all in memory.
READ_BLOCK_FRAMES = 1 << 20
# More frames than this per byte of file is a corrupt header: FLAC holds at most about 6,000 (65,535-sample blocks of
# digital silence), about 350 with its encoder's defaults.
MAX_FRAMES_PER_BYTE = 8192
# The first read buffer has room for this many frames per byte of file (more than PCM or typical FLAC and MP3 hold) and
# doubles when a file holds more, so its size follows the audio that arrives rather than what a header claims.
FIRST_BUFFER_FRAMES_PER_BYTE = 64
# libsndfile's frame count for a stream whose header leaves its length open (FLAC written to a pipe: 0 total samples).
UNKNOWN_FRAMES = 2**63 - 1
# Data sizes that streaming writers leave as "unknown" (WAV, AIFF, AU: 0 or all ones; CAF: -1).
UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF, -1)
# Where an MP3's Xing/Info tag starts in its first frame: after the frame header and 9, 17 or 32 bytes of side info.
XING_OFFSETS = (13, 21, 36)
# Sony Wave64's chunk ids are GUIDs: its "riff" file id, "wave" form id and "data" chunk id.
W64_RIFF = bytes.fromhex("726966662e91cf11a5d628db04c10000")
W64_WAVE = bytes.fromhex("77617665f3acd3118cd100c04f8edb8a")
W64_DATA = bytes.fromhex("64617461f3acd3118cd100c04f8edb8a")
# The header flag of an Ogg stream's last page.
OGG_END_OF_STREAM = 0x04
# How far back from its end a FLAC stream of unknown length is searched for its last frame, when STREAMINFO does not
# give the largest frame: longer than any frame (65,535 samples of 8 channels at 32 bits, stored verbatim: 2 MiB).
FLAC_LAST_FRAME_SEARCH = 1 << 22


def check_sampling_rate(sampling_rate, name="sampling_rate"):
    """Returns `sampling_rate` as an int; raises ValueError unless it is a positive integer-like number."""
    is_number = isinstance(sampling_rate, numbers.Real) and not isinstance(sampling_rate, (bool, np.bool_))
    is_whole = is_number and (isinstance(sampling_rate, numbers.Integral) or float(sampling_rate).is_integer())
    if not is_whole or sampling_rate <= 0 or sampling_rate > MAX_SAMPLING_RATE:
        raise ValueError(
            f"{name} must be a positive integer, got {sampling_rate!r} (a rate in Hz up to {MAX_SAMPLING_RATE:,}, "
            "e.g. 16000)."
        )
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


def bytes_to_end(stream, position):
    """How many bytes the stream holds from `position` to its end; leaves the stream at its end."""
    return stream.seek(0, io.SEEK_END) - position


def find_chunk(stream, chunk_header, chunk_id, align, size_counts_header=False):
    """
    Walks chunks from the stream position (each header is `struct` format `chunk_header`: id, size; chunks start at
    multiples of `align` bytes; Wave64 sizes count the header) to the first `chunk_id` chunk; returns the size of its
    data with the stream at its data, or None when there is none.
    """
    header_size = struct.calcsize(chunk_header)
    position = stream.tell()
    end = bytes_to_end(stream, 0)
    while True:
        stream.seek(position)
        header = stream.read(header_size)
        if len(header) < header_size:
            return None
        found_id, size = struct.unpack(chunk_header, header)
        if size_counts_header:
            size -= header_size
        if found_id == chunk_id:
            return size
        position += header_size + -(-size // align) * align
        if size < 0 or position >= end:  # a malformed header or no such chunk; libsndfile will say what is wrong
            return None


def chunk_data_sizes(stream, chunk_header, data_id, align, size_counts_header=False):
    """`(declared, available)` bytes of the first `data_id` chunk, or None when there is none or its size is unknown."""
    declared = find_chunk(stream, chunk_header, data_id, align, size_counts_header)
    if declared is None or declared in UNKNOWN_DATA_SIZES:
        return None
    return declared, bytes_to_end(stream, stream.tell())


def rf64_data_sizes(stream):
    """`(declared, available)` bytes of an RF64 file's audio data, whose 64-bit size is in the "ds64" chunk."""
    ds64_size = find_chunk(stream, "<4sI", b"ds64", align=2)
    if ds64_size is None or ds64_size < 16:
        return None
    declared = struct.unpack("<QQ", stream.read(16))[1]  # RIFF size, then data size
    stream.seek(ds64_size - 16 + ds64_size % 2, io.SEEK_CUR)
    if find_chunk(stream, "<4sI", b"data", align=2) is None:
        return None
    return declared, bytes_to_end(stream, stream.tell())


def au_data_sizes(stream, start):
    """`(declared, available)` bytes of the audio data of a Sun/NeXT .au file starting at `start`, or None."""
    data_offset, size = struct.unpack(">II", stream.read(8))
    if size in UNKNOWN_DATA_SIZES:
        return None
    return size, bytes_to_end(stream, start + data_offset)


def mp3_data_sizes(stream):
    """
    `(declared, available)` bytes of an MP3 stream whose first frame holds a Xing/Info tag with the stream's size (as
    LAME and libsndfile write them), or None. Files without the tag have no size to check.
    """
    start = stream.tell()
    id3 = stream.read(10)
    if id3[:3] == b"ID3" and len(id3) == 10:  # ID3v2 tag before the first frame; its size is 4 x 7 bits
        start += 10 + sum(byte << (7 * (3 - index)) for index, byte in enumerate(id3[6:10]))
    stream.seek(start)
    frame = stream.read(XING_OFFSETS[-1] + 16)
    for offset in XING_OFFSETS:  # after the 4-byte frame header and the side information (9, 17 or 32 bytes)
        if frame[offset : offset + 4] in (b"Xing", b"Info") and len(frame) >= offset + 16:
            flags = struct.unpack(">I", frame[offset + 4 : offset + 8])[0]
            if not flags & 2:  # no byte count
                return None
            field = offset + (12 if flags & 1 else 8)  # the byte count follows the frame count when there is one
            return struct.unpack(">I", frame[field : field + 4])[0], bytes_to_end(stream, start)
    return None


def audio_data_sizes(stream):
    """
    `(declared, available)` bytes of the audio data of a WAV, RF64, Wave64, AIFF, AU, CAF or MP3 (Xing) file: what its
    header says and what the file holds. None for other formats and sizes left unknown. The stream position is restored.
    """
    start = stream.tell()
    try:
        magic = stream.read(16)
        stream.seek(start + 12)  # past the RIFF/RF64/FORM header, at the first chunk
        if magic[:4] == b"RIFF" and magic[8:12] == b"WAVE":
            return chunk_data_sizes(stream, "<4sI", b"data", align=2)
        if magic[:4] == b"RF64" and magic[8:12] == b"WAVE":
            return rf64_data_sizes(stream)
        if magic[:4] == b"FORM" and magic[8:12] in (b"AIFF", b"AIFC"):
            return chunk_data_sizes(stream, ">4sI", b"SSND", align=2)
        if magic == W64_RIFF:
            stream.seek(start + 24)  # after the file GUID and the 64-bit file size
            if stream.read(16) != W64_WAVE:
                return None
            return chunk_data_sizes(stream, "<16sQ", W64_DATA, align=8, size_counts_header=True)
        if magic[:4] == b"caff":
            stream.seek(start + 8)  # file header: "caff", version, flags
            return chunk_data_sizes(stream, ">4sq", b"data", align=1)
        if magic[:4] == b".snd":
            stream.seek(start + 4)
            return au_data_sizes(stream, start)
        stream.seek(start)
        return mp3_data_sizes(stream)
    except struct.error:  # a header cut inside a size field; libsndfile will say what is wrong
        return None
    finally:
        stream.seek(start)


def ogg_is_cut_short(stream):
    """
    Whether an Ogg file (Vorbis, Opus, FLAC in Ogg) ends inside a page or without its end-of-stream page, as a copy
    cut short does; libsndfile reads such files up to the cut without complaint. The stream position is restored.
    """
    start = stream.tell()
    try:
        end = stream.seek(0, io.SEEK_END)
        position, last_flags = start, None
        while position < end:
            stream.seek(position)
            header = stream.read(27)
            if header[:4] != b"OggS"[: len(header[:4])]:
                break  # not a page: something appended after the pages (a tag); the last page decides
            if len(header) < 27:
                return True
            lacing = stream.read(header[26])
            position += 27 + header[26] + sum(lacing)
            if len(lacing) < header[26] or position > end:
                return True
            last_flags = header[5]
        return last_flags is None or not last_flags & OGG_END_OF_STREAM
    finally:
        stream.seek(start)


@functools.cache
def crc_table(polynomial, width):
    """The byte-wise table of a most-significant-bit-first CRC of `width` bits (FLAC's CRC-8 and CRC-16)."""
    top, mask, table = 1 << (width - 1), (1 << width) - 1, []
    for byte in range(256):
        value = byte << (width - 8)
        for _ in range(8):
            value = ((value << 1) ^ polynomial if value & top else value << 1) & mask
        table.append(value)
    return table


def crc(data, polynomial, width):
    table, mask, value = crc_table(polynomial, width), (1 << width) - 1, 0
    for byte in data:
        value = ((value << 8) & mask) ^ table[(value >> (width - 8)) ^ byte]
    return value


def flac_frame_header_length(data, start):
    """Bytes in the FLAC frame header at `data[start]` (its CRC-8 included), or None where no valid header starts."""
    if len(data) < start + 6 or data[start] != 0xFF or data[start + 1] not in (0xF8, 0xF9):
        return None
    block_code, rate_code = data[start + 2] >> 4, data[start + 2] & 0x0F
    if block_code == 0 or rate_code == 15 or data[start + 3] & 0x01:
        return None
    leading_ones = 8 - (data[start + 4] ^ 0xFF).bit_length()  # the frame number, coded like UTF-8: 1 to 7 bytes
    if leading_ones in (1, 8):
        return None
    length = 4 + max(leading_ones, 1) + {6: 1, 7: 2}.get(block_code, 0) + {12: 1, 13: 2, 14: 2}.get(rate_code, 0) + 1
    if len(data) < start + length or crc(data[start : start + length - 1], 0x07, 8) != data[start + length - 1]:
        return None
    return length


def flac_stream_is_cut_short(stream):
    """
    Whether a FLAC file whose STREAMINFO leaves the length open (0 total samples: written to a pipe) ends inside a
    frame: a whole stream ends with a frame whose last two bytes are the CRC-16 of the rest of it. libsndfile decodes
    such a file up to the cut without complaint (with a known length, the count of frames tells). The stream position
    is restored.
    """
    start = stream.tell()
    try:
        stream.read(4)  # "fLaC"
        streaminfo = stream.read(38)  # always the first metadata block: a 4-byte header and 34 bytes
        if len(streaminfo) < 38:
            return True
        if int.from_bytes(streaminfo[17:22], "big") & (2**36 - 1):  # total samples: the length is known
            return False
        largest_frame, last_block = int.from_bytes(streaminfo[11:14], "big"), streaminfo[0] & 0x80
        while not last_block:
            header = stream.read(4)
            if len(header) < 4:
                return True
            last_block = header[0] & 0x80
            stream.seek(int.from_bytes(header[1:4], "big"), io.SEEK_CUR)
        audio_start, end = stream.tell(), stream.seek(0, io.SEEK_END)
        if audio_start >= end:
            return audio_start > end  # no frames at all is an empty stream, not a cut one
        stream.seek(max(audio_start, end - (largest_frame or FLAC_LAST_FRAME_SEARCH)))
        tail = stream.read()
        if tail[-128:-125] == b"TAG":  # an ID3v1 tag appended by a tagger
            tail = tail[:-128]
        position = len(tail)
        while (position := tail.rfind(b"\xff", 0, position)) >= 0:
            if flac_frame_header_length(tail, position) and crc(tail[position:-2], 0x8005, 16) == int.from_bytes(
                tail[-2:], "big"
            ):
                return False
        return True
    finally:
        stream.seek(start)


def check_not_truncated(stream, name):
    """Raises ValueError when a file holds less audio than its header says (libsndfile would read less)."""
    start = stream.tell()
    magic = stream.read(4)
    stream.seek(start)
    if magic == b"fLaC" and flac_stream_is_cut_short(stream):
        raise ValueError(
            f"{name} is truncated: its FLAC stream (of unknown length) ends inside a frame; re-copy or re-export the "
            "file."
        )
    if magic == b"OggS":
        if ogg_is_cut_short(stream):
            raise ValueError(
                f"{name} is truncated: it ends inside an Ogg page or without the stream's last page; re-copy or "
                "re-export the file."
            )
        return
    sizes = audio_data_sizes(stream)
    if sizes is not None and sizes[1] < sizes[0]:
        declared, available = sizes
        raise ValueError(
            f"{name} is truncated: its header promises {declared:,} bytes of audio but only {available:,} "
            f"({available / declared:.0%}) are there; re-copy or re-export the file."
        )


def read_mono(sound, buffer_frames):
    """
    The frames of an open `soundfile.SoundFile` as mono float32 (channels averaged), read block by block into a buffer
    of `buffer_frames` frames that doubles as audio arrives: what a header claims is never allocated up front.
    """
    audio = np.empty(min(sound.frames, buffer_frames), dtype=np.float32)
    filled = 0
    if sound.frames == UNKNOWN_FRAMES:
        blocks = blocks_without_seeking(sound)
    else:
        blocks = sound.blocks(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
    for block in blocks:
        if filled + len(block) > len(audio):
            grown = np.empty(min(sound.frames, 2 * len(audio)), dtype=np.float32)
            grown[:filled] = audio[:filled]
            audio = grown
        audio[filled : filled + len(block)] = block.mean(axis=1) if sound.channels > 1 else block[:, 0]
        filled += len(block)
    return audio[:filled]


def blocks_without_seeking(sound):
    """
    Float32 blocks (frames, channels) of an open stream of unknown length, read straight from libsndfile: soundfile's
    readers ask libsndfile for the read position first, which it cannot give for such a stream. Each block is a view
    of one buffer, valid until the next.
    """
    block = np.empty((READ_BLOCK_FRAMES, sound.channels), dtype=np.float32)
    pointer = soundfile._ffi.cast("float *", block.ctypes.data)
    while frames := soundfile._snd.sf_readf_float(sound._file, pointer, READ_BLOCK_FRAMES):
        yield block[:frames]
    error = soundfile._snd.sf_error(sound._file)
    if error:
        raise soundfile.LibsndfileError(error)


def read_audio_file(source, name, downmix=False):
    """
    Reads a binary file-like object with soundfile: `(mono float32 array, sampling rate)`. Multichannel
    audio is downmixed block by block (only with `downmix=True`); truncated files, and headers claiming more audio than
    the file could hold, are refused.
    """
    file_bytes, buffer_frames = None, READ_BLOCK_FRAMES
    if source.seekable():
        check_not_truncated(source, name)
        start = source.tell()
        file_bytes = bytes_to_end(source, start)
        source.seek(start)
        buffer_frames = max(READ_BLOCK_FRAMES, FIRST_BUFFER_FRAMES_PER_BYTE * file_bytes)
    try:
        with soundfile.SoundFile(source) as sound:
            if sound.channels > 1 and not downmix:
                raise ValueError(
                    f"{name} has {sound.channels} channels: it is multichannel, but the model takes mono audio. "
                    "Pass downmix=True to average the channels."
                )
            known_length = sound.frames != UNKNOWN_FRAMES
            if known_length and file_bytes is not None and sound.frames > MAX_FRAMES_PER_BYTE * max(file_bytes, 1):
                raise ValueError(
                    f"{name} claims {sound.frames:,} frames ({sound.frames / sound.samplerate / 3600:.1f} h) in "
                    f"{file_bytes:,} bytes, more than any encoding holds: its header is corrupt."
                )
            audio = read_mono(sound, buffer_frames)
            frames, rate = sound.frames if known_length else len(audio), sound.samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise unreadable(name, error) from error
    if len(audio) < frames:
        raise ValueError(
            f"{name} is truncated: its header promises {frames:,} frames but only {len(audio):,} are there."
        )
    return audio, rate


def unreadable(name, error):
    """The error for audio that soundfile cannot read: libsndfile's reason, without the file object's repr."""
    return ValueError(f"Could not read {name}: {getattr(error, 'error_string', error)}")


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
    """Names an audio value in messages: its path when it has one (a file path, or a dict's "path")."""
    path = value if isinstance(value, (str, os.PathLike)) else value.get("path") if isinstance(value, dict) else None
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
    """
    soundfile's header information of a path or file-like object, with a clear error when it is not audio. A stream
    whose header leaves its length open is decoded to count its frames.
    """
    try:
        position = source.tell() if hasattr(source, "tell") else None
        info = soundfile.info(source)
        if info.frames == UNKNOWN_FRAMES:
            if position is not None:
                source.seek(position)
            with soundfile.SoundFile(source) as sound:
                info.frames = sum(len(block) for block in blocks_without_seeking(sound))
            info.duration = info.frames / info.samplerate
        if position is not None:
            source.seek(position)
        return info
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise unreadable(name, error) from error


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
    if not hasattr(audio, "__len__"):
        raise ValueError(
            f"{name} is a {type(audio).__name__}: expected an array, a file path, encoded bytes, a dict or a decoder."
        )
    if sampling_rate is None:
        raise ValueError(f"{name} is an array: pass `sampling_rate` for array inputs.")
    return len(audio) / check_sampling_rate(sampling_rate)


def split_batch(inputs, downmix=False):
    """
    The clips of `inputs`: a list or tuple of anything but numbers is a batch, a 2-D array or tensor is a batch of
    mono clips (one per row) unless `downmix=True` makes it one multichannel clip; anything else is one clip. A
    (samples, 1) column, as soundfile reads mono files, is one clip (one-sample clips cannot be embedded).
    """
    if isinstance(inputs, Iterator):  # a generator of clips
        inputs = list(inputs)
    if isinstance(inputs, (list, tuple)) and inputs and not isinstance(inputs[0], numbers.Number):
        return list(inputs)
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 2 and inputs.shape[1] > 1 and not downmix:
        if len(inputs) == 0:
            raise ValueError(f"The input is a batch of no clips (shape {tuple(inputs.shape)}).")
        return list(inputs)
    return [inputs]


__all__ = [
    "carries_own_rate",
    "check_sampling_rate",
    "has_arrays",
    "item_duration",
    "load_audio",
    "load_waveform",
    "split_batch",
    "to_mono_float32",
]
