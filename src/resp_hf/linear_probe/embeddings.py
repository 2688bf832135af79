"""Clip embeddings of a dataset split under the OPERA protocol, computed once and cached on disk."""

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Audio, Dataset

from ..audio import decode_audio
from ..models.resp_m2d import RespM2DFeatureExtractor, RespM2DModel
from ..models.resp_m2d.audio_utils_resp_m2d import describe_source, item_duration
from ..models.resp_m2d.modeling_resp_m2d import embed_clips
from ..output_folders import atomic_file

CROP_MODES = ("random", "center", "none")
logger = logging.getLogger(__name__)


def fit_length(waveform, length, crop, seed):
    """
    The protocol's window: zero-pad at the end when shorter than `length` samples; when longer, take a window that
    starts at `np.random.randint(excess)` as EVAR's `random_crop` does, drawn here from `seed` so that a run repeats
    (`"random"`, the paper's), or the centre (`"center"`). `"none"` keeps the clip.
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop={crop!r} is not one of {CROP_MODES}.")
    if crop == "none" or len(waveform) == length:
        return waveform
    if len(waveform) < length:
        return np.pad(waveform, (0, length - len(waveform)))
    excess = len(waveform) - length
    start = excess // 2 if crop == "center" else int(np.random.default_rng(seed).integers(0, excess))
    return waveform[start : start + length]


def recording_seed(crop_seed, value):
    """The crop seed of one recording: `crop_seed` with its path (or its content when it has none), run-independent."""
    identity = audio_identity(value)
    name = identity[1] if identity[0] in ("file", "path") else identity
    return int.from_bytes(hashlib.sha256(json.dumps([crop_seed, name]).encode()).digest()[:8], "little")


def parse_layers(layers, num_layers):
    """
    The original M2D layer numbers (0..L-1) that `layers` names: `"last"` (= -1 = L-1), `"all"`, or comma-separated
    numbers where negatives count from the end. Numbers outside the model are an error that explains the numbering.
    """
    if layers == "last":
        return [num_layers - 1]
    if layers == "all":
        return list(range(num_layers))
    numbering = (
        f"layers follow the original M2D numbering: 0..{num_layers - 1} for this {num_layers}-block encoder, -1 = "
        f"{num_layers - 1} = the last block after the final LayerNorm (earlier resp_hf versions named them "
        f"1..{num_layers} and 'last', one higher)"
    )
    try:
        numbers = [int(part) for part in str(layers).split(",")]
    except ValueError:
        raise ValueError(f"layers={layers!r} must be 'last', 'all' or comma-separated numbers; {numbering}.") from None
    if any(not -num_layers <= number < num_layers for number in numbers):
        raise ValueError(f"layers={layers!r} is outside the model: {numbering}.")
    return sorted({number % num_layers for number in numbers})


def model_fingerprint(model):
    """SHA-256 of the model's weights and config: any change to either gives a new fingerprint."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def split_fingerprint(split):
    """Digest of a split's labels and audio: the content of bytes or arrays, the size and mtime of files on disk."""
    digest = hashlib.sha256()
    for value, label in zip(audio_values(split), split["label"]):
        digest.update(json.dumps([label, audio_identity(value)]).encode())
    return digest.hexdigest()


def audio_identity(value):
    """
    What identifies one undecoded audio value: a digest of its bytes or array when it holds them, else its path with
    the file's size and modification time (a path that is not a file on disk can only be named).
    """
    if isinstance(value, (str, os.PathLike)):
        value = {"path": value}
    if value.get("bytes") is not None:
        return ["bytes", hashlib.sha256(value["bytes"]).hexdigest()]
    if value.get("array") is not None:
        samples = np.ascontiguousarray(value["array"])
        content = hashlib.sha256(samples.tobytes()).hexdigest()
        return ["array", str(samples.dtype), samples.shape, value.get("sampling_rate"), content]
    path = value.get("path")
    path = None if path is None else os.fspath(path)
    if path and os.path.isfile(path):
        stat = os.stat(path)
        return ["file", path, stat.st_size, stat.st_mtime_ns]
    return ["path", path]


def audio_values(split):
    """The undecoded audio column (paths or `{"path", "bytes"}` dicts), whatever its feature type."""
    if isinstance(split.features["audio"], Audio):
        split = split.cast_column("audio", Audio(decode=False))
    return split["audio"]


CHECKSUM = "__sha256__"


def arrays_digest(arrays):
    """SHA-256 over the names, dtypes, shapes and bytes of `arrays`, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, str(array.dtype), array.shape]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class CorruptCacheEntry(ValueError):
    """A cache file that cannot be trusted: unreadable, of the wrong shape, non-finite or not matching its checksum."""


class EmbeddingCache:
    """
    `.npz` files of embeddings in `cache_dir`, keyed by a hash of the model weights, the data and the settings. Each
    file carries a SHA-256 of its arrays; a file that fails to load or to verify is recomputed with a warning.
    """

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)

    def path(self, key):
        return self.cache_dir / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]}.npz"

    def load(self, key, layers, rows):
        """The cached `{layer: (rows, size)}` arrays, or None when absent or corrupt (then a warning names the file)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return self.verified(path, [str(layer) for layer in layers], rows)
        except CorruptCacheEntry as error:  # a cache is only an optimization: never let a bad entry stop a run
            logger.warning("Embedding cache file %s is corrupt (%s); recomputing it.", path, error)
            return None

    @staticmethod
    def verified(path, layers, rows):
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except Exception as error:  # zip, zlib, npy-header and I/O errors of a damaged file alike
            raise CorruptCacheEntry(f"unreadable: {type(error).__name__}: {error}") from error
        checksum = arrays.pop(CHECKSUM, None)
        if checksum is None or checksum.shape != () or str(checksum) != arrays_digest(arrays):
            raise CorruptCacheEntry("its checksum does not match its contents")
        if sorted(arrays) != sorted(layers):
            raise CorruptCacheEntry(f"it holds layers {sorted(arrays)}, not {sorted(layers)}")
        for name, array in arrays.items():
            if array.ndim != 2 or len(array) != rows:
                raise CorruptCacheEntry(f"layer {name} has shape {array.shape}, not ({rows}, size)")
            if not np.isfinite(array).all():
                raise CorruptCacheEntry(f"layer {name} holds non-finite values")
        return arrays

    def save(self, key, arrays):
        """Writes the entry with its checksum to a temporary file, then renames it, so readers never see half a file."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        arrays = {str(name): array for name, array in arrays.items()}
        with atomic_file(path) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, **arrays, **{CHECKSUM: np.array(arrays_digest(arrays))})
            handle.flush()
            os.fsync(handle.fileno())


def embed_split(
    model: RespM2DModel,
    split: Dataset,
    layers: Sequence[int] = (-1,),
    crop: str = "random",
    seconds: float = 10.0,
    crop_seed: int = 0,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """
    Clip embeddings of every row of `split` for each layer (original M2D numbers, see `RespM2DModel.layer_output`):
    `{"k": (rows, size)}` float32 arrays keyed by the layer number as text.

    Audio is decoded batch by batch with soundfile + soxr at the model's rate and fitted to `seconds` (see
    `fit_length`; a random crop is seeded per recording); whole clips (`crop="none"`) are batched by length. The
    clips go through `embed_clips`, the loop of `RespM2DModel.embed`, all layers in one pass; a progress bar is shown
    unless `progress` is False.
    """
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    rate = extractor.sampling_rate
    length = int(round(seconds * rate))
    values = audio_values(split)

    def fitted_clip(index: int) -> np.ndarray:
        value = values[index]
        return fit_length(decode_audio(value, rate, downmix=True), length, crop, recording_seed(crop_seed, value))

    # Whole clips are batched by length to limit padding; fitted clips all have one length.
    durations = [item_duration(value, None) for value in values] if crop == "none" else None
    embeddings = embed_clips(
        model,
        fitted_clip,
        len(values),
        extractor,
        durations,
        layers,
        batch_size,
        progress=progress is not False,
        describe=lambda index: describe_source(values[index], f"row {index}"),
    )
    return {str(layer): embedding.numpy() for layer, embedding in embeddings.items()}
