"""Clip embeddings of a dataset split under the OPERA protocol, computed once and cached on disk."""

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import soundfile
import torch
from datasets import Audio

from ..audio import decode_audio
from ..models.resp_m2d import RespM2DFeatureExtractor
from ..models.resp_m2d.modeling_resp_m2d import progress_bar

CROP_MODES = ("center", "random", "none")


def fit_length(waveform, length, crop, seed):
    """
    The protocol's window: zero-pad at the end when shorter than `length` samples; when longer, take the centre
    (`"center"`) or a window at a position drawn from `seed` (`"random"`, reproducible). `"none"` keeps the clip.
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop={crop!r} is not one of {CROP_MODES}.")
    if crop == "none" or len(waveform) == length:
        return waveform
    if len(waveform) < length:
        return np.pad(waveform, (0, length - len(waveform)))
    excess = len(waveform) - length
    start = excess // 2 if crop == "center" else int(np.random.default_rng(seed).integers(0, excess + 1))
    return waveform[start : start + length]


def layer_names(model, layers):
    """`"last"` (the final output, as `pooler_output`) or `"all"`: every block's output `"1"`..`"N"` plus `"last"`."""
    if layers == "last":
        return ["last"]
    if layers == "all":
        return [str(k) for k in range(1, model.config.num_hidden_layers + 1)] + ["last"]
    raise ValueError(f"layers={layers!r} must be 'last' or 'all'.")


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


class EmbeddingCache:
    """`.npz` files of embeddings in `cache_dir`, keyed by a hash of the model weights, the data and the settings."""

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)

    def path(self, key):
        return self.cache_dir / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]}.npz"

    def load(self, key):
        path = self.path(key)
        if not path.is_file():
            return None
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}

    def save(self, key, arrays):
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        temporary = path.with_suffix(".tmp.npz")
        np.savez(temporary, **arrays)
        temporary.replace(path)


@torch.no_grad()
def embed_split(model, split, layers=("last",), crop="center", seconds=10.0, crop_seed=0, batch_size=16, progress=None):
    """
    Clip embeddings of every row of `split` for each layer: `{layer: (rows, size)}` float32 arrays.

    Audio is decoded batch by batch with soundfile + soxr at the model's rate and fitted to `seconds` (see
    `fit_length`); whole clips (`crop="none"`) are batched by length. Layers other than `"last"` pool the block
    outputs (`hidden_states[k]`) the same way as `pooler_output`.
    """
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    rate = extractor.sampling_rate
    length = int(round(seconds * rate))
    values = audio_values(split)
    order = list(range(len(values)))
    if crop == "none":  # whole clips: group similar lengths to limit padding
        order.sort(key=lambda i: audio_duration(values[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    outputs = {layer: [None] * len(values) for layer in layers}
    needs_hidden = any(layer != "last" for layer in layers)
    for batch in progress_bar(batches, progress is not False, "Embedding"):
        waveforms = [
            fit_length(decode_audio(values[i], rate, downmix=True), length, crop, [crop_seed, i]) for i in batch
        ]
        result = model(
            **extractor(waveforms, sampling_rate=rate, device=model.device), output_hidden_states=needs_hidden
        )
        for layer in layers:
            hidden = None if layer == "last" else result.hidden_states[int(layer)]
            pooled = result.pooler_output if hidden is None else model.pool(hidden, result.frame_mask)
            for row, index in enumerate(batch):
                outputs[layer][index] = pooled[row].float().cpu().numpy()
    return {layer: np.stack(rows) for layer, rows in outputs.items()}


def audio_duration(value):
    """Duration in seconds of an undecoded audio value, from the file header."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return soundfile.info(io.BytesIO(value["bytes"])).duration
    return soundfile.info(value if isinstance(value, str) else value["path"]).duration
