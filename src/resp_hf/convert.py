"""
Reading official M2D checkpoints (`.pth` or `.safetensors`) and converting them into `resp_hf` folders (safetensors +
remote code). [`read_m2d_checkpoint`] is the one reader: conversion and further pre-training both start from it.
"""

import argparse
import hashlib
import math
import os
import pathlib
import pickle
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from . import cards
from .models.resp_m2d import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel
from .models.resp_m2d.configuration_resp_m2d import DEFAULT_NORM_STATS
from .output_folders import atomic_folder, check_output_folder

# Prefixes that wrap the encoder in fine-tuned checkpoints (EVAR, the portable runtime).
WRAPPER_PREFIXES = ("module.ar.runtime.backbone.", "backbone.")
# Python objects official checkpoints contain besides tensors; everything else is refused.
SAFE_GLOBALS = [
    argparse.Namespace,
    pathlib.PosixPath,
    np.dtype,
    np.ndarray,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
    np._core.multiarray.scalar,
    np._core.multiarray._reconstruct,
]
# The original splits the part after the first '-' at each 'p': input size, patch size, sampling rate, then extra
# parameters (M2D-CLAP's text-encoder settings, e.g. 'p16kpBpTI'), and ignores anything after a further '-'.
NAME_PATTERN = re.compile(
    r"^(?P<model>[^-]+)-(?P<mels>\d+)x(?P<frames>\d+)p(?P<patch_f>\d+)x(?P<patch_t>\d+)"
    r"(?:p(?P<rate>16k|32k)(?P<extra>(?:p[^-]*)?))?(?:-.*)?$"
)
BLOCK_KEYS = {
    "norm1": "layernorm_before",
    "attn.qkv": "attention.qkv",
    "attn.proj": "attention.proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
TOP_LEVEL_KEYS = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
# Target-encoder and predictor weights outside the block stacks, named as in `M2DPretrainingModel`.
PRETRAINING_KEYS = {
    "target_norm.weight": "target_norm.weight",
    "target_norm.bias": "target_norm.bias",
    "mask_token": "predictor.mask_token",
    "decoder_pos_embed": "predictor.position_embeddings",
    "decoder_embed.weight": "predictor.embed.weight",
    "decoder_embed.bias": "predictor.embed.bias",
    "decoder_norm.weight": "predictor.norm.weight",
    "decoder_norm.bias": "predictor.norm.bias",
    "decoder_pred.weight": "predictor.head.weight",
    "decoder_pred.bias": "predictor.head.bias",
}
ENCODER_KEY_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
# What the EMA target encoder and the predictor of a training checkpoint are named with.
PRETRAINING_KEY_PREFIXES = ("target_", "decoder_", "mask_token")
# Block stacks of training checkpoints and their resp_hf names: the online encoder, its EMA target (the same depth)
# and the predictor (`M2DPretrainingModel`).
BLOCK_STACKS = {"blocks": "encoder.layer", "target_blocks": "target_layers", "decoder_blocks": "predictor.layers"}
BLOCK_PATTERN = re.compile(
    rf"^(?P<stack>{'|'.join(BLOCK_STACKS)})\.(?P<index>\d+)\.(?P<module>.+)\.(?P<kind>weight|bias)$"
)
# The number of dimensions of each encoder weight outside the blocks; inside, matrices are 2-d and the rest 1-d.
TOP_LEVEL_RANKS = {
    "cls_token": 3,
    "pos_embed": 3,
    "patch_embed.proj.weight": 4,
    "patch_embed.proj.bias": 1,
    "norm.weight": 1,
    "norm.bias": 1,
}
BLOCK_MATRICES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class UnsafeCheckpointError(ValueError):
    """The checkpoint needs code outside the allowlist to unpickle; it was refused and nothing was executed."""


@dataclass
class M2DCheckpoint:
    """
    An official M2D checkpoint read and checked by [`read_m2d_checkpoint`], in `resp_hf` names.

    Attributes:
        path: the file read.
        name: the official-style name that gave the input and patch size and the sampling rate.
        config: the encoder's config, with the checkpoint's norm statistics (`DEFAULT_NORM_STATS` when it has none).
        encoder_weights: the online encoder, named as in [`RespM2DModel`].
        pretraining_weights: the EMA target encoder and the predictor of a training checkpoint, named as in
            `M2DPretrainingModel` (empty for an encoder-only release); a weight without a known name keeps its
            official one, so that loading names it.
        dropped: the number of non-encoder tensors per top-level prefix (what an encoder folder leaves out).
        notes: what the reader assumed or left out, for the user.
    """

    path: Path
    name: str
    config: RespM2DConfig
    encoder_weights: dict[str, torch.Tensor]
    pretraining_weights: dict[str, torch.Tensor]
    dropped: dict[str, int]
    notes: list[str]


@dataclass
class ConversionReport:
    """What a conversion produced, kept and dropped."""

    source: Path
    output_dir: Path
    config: RespM2DConfig
    sha256: str
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self):
        config = self.config
        lines = [
            f"Converted {self.source} -> {self.output_dir}",
            f"  encoder: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_attention_heads} heads, input {config.input_size[0]}x{config.input_size[1]}, "
            f"patch {config.patch_size[0]}x{config.patch_size[1]},"
            f" {config.sampling_rate} Hz, norm stats ({config.norm_mean:g}, {config.norm_std:g})",
        ]
        if self.dropped:
            total = sum(self.dropped.values())
            groups = ", ".join(f"{prefix}* ({count})" for prefix, count in self.dropped.items())
            lines.append(f"  dropped {total} non-encoder tensors: {groups}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def read_m2d_checkpoint(path: str | Path, name: str | None = None) -> M2DCheckpoint:
    """
    Reads an official M2D checkpoint without executing code from it: loads it (weights-only), unwraps and checks it
    (one weight per converted name, finite values, whole block stacks, an EMA target as deep as the online
    encoder), splits the encoder from the target encoder and predictor, reads the norm statistics and infers the
    encoder's config.

    Args:
        path: the `.pth` or `.safetensors` file (full training checkpoint, encoder-only release or fine-tuned
            checkpoint).
        name (`str`, *optional*): official-style name giving the input and patch size and sampling rate
            (e.g. `m2d_vit_base-80x608p16x16p16k`); by default the checkpoint's parent folder name.
    """
    path = Path(path)
    if name == "":
        raise ValueError(f"{path}: the name is empty; omit it to use the checkpoint's folder name.")
    state_dict = extract_state_dict(load_checkpoint(path), path)
    name = name or name_from_folder(path)
    name_info = parse_checkpoint_name(name)
    check_finite(state_dict, path)
    check_block_numbering(state_dict, path)
    encoder, pretraining, dropped = split_weights(state_dict, path)
    norm_stats, notes = read_norm_stats(state_dict, path)
    if any(prefix in dropped for prefix in ("audio_proj", "text_proj")):
        notes.append("M2D-CLAP projection heads (audio_proj, text_proj) are not part of the audio encoder; dropped")
    if name_info["extra"]:
        extra = ", ".join(name_info["extra"])
        notes.append(f"name parameters {extra} (M2D-CLAP's text-encoder settings) do not concern the audio encoder")
    config = infer_config(encoder, name_info, norm_stats, path)
    with torch.device("meta"):  # shapes only: sizes the weights do not have are never allocated
        check_checkpoint_fits(
            RespM2DModel(config), encoder, path, f"the inferred architecture ({architecture_of(config)})"
        )
    return M2DCheckpoint(
        path=path,
        name=name,
        config=config,
        encoder_weights=encoder,
        pretraining_weights=pretraining,
        dropped=dropped,
        notes=notes,
    )


def load_checkpoint(path: str | Path) -> dict:
    """Loads a `.pth` (weights-only unpickling, with an allowlist) or `.safetensors` file without executing code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path)
        except Exception as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise UnsafeCheckpointError(
                f"Refused to load {path}: unpickling it would call {refused.group(1)}, which is not an allowed "
                "checkpoint type. Nothing from the file was executed. Only load checkpoints from sources you trust."
            ) from None
        raise ValueError(f"{path} is not a PyTorch checkpoint the weights-only loader can read.") from None
    except Exception as error:  # corrupt or foreign files fail in many ways inside torch.load
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error}).") from None


def extract_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """
    Returns the flat tensor dict of a checkpoint (`model` entry or the dict itself) without wrapper prefixes; fails
    when two of its names convert to one (e.g. `blocks.0.norm1.weight` beside `backbone.blocks.0.norm1.weight`).
    """
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(
            f"{path} holds no state dict of tensors (found {type(checkpoint).__name__}); not an M2D checkpoint."
        )
    state_dict, sources = {}, defaultdict(list)
    for key, value in checkpoint.items():
        if not isinstance(key, str):
            raise ValueError(f"{path} holds a state-dict key of type {type(key).__name__}; keys must be strings.")
        name = unwrapped(key)
        state_dict[name] = value
        sources[rename_key(name) or name].append(key)
    check_converted_names_unique(sources, path)
    return state_dict


def unwrapped(key: str) -> str:
    """An official weight name without the prefix of a fine-tuning wrapper (`WRAPPER_PREFIXES`)."""
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def check_converted_names_unique(sources: dict[str, list[str]], path: Path) -> None:
    """Fails naming the checkpoint's keys that convert to one name (`sources`: converted name -> its keys)."""
    clashes = [f"{' and '.join(map(repr, keys))} -> {name!r}" for name, keys in sources.items() if len(keys) > 1]
    if clashes:
        raise ValueError(
            f"{path} holds weights that convert to the same name, so one would overwrite the other: "
            f"{shortened(clashes, most=3, separator='; ')}."
        )


def rename_key(key: str) -> str | None:
    """
    Maps an official weight name to its `resp_hf` name (`RespM2DModel` for the encoder, `M2DPretrainingModel` for the
    target encoder and predictor); None when the name is not a known M2D weight.
    """
    if key in TOP_LEVEL_KEYS:
        return TOP_LEVEL_KEYS[key]
    if key in PRETRAINING_KEYS:
        return PRETRAINING_KEYS[key]
    match = BLOCK_PATTERN.match(key)
    if match and match["module"] in BLOCK_KEYS:
        return f"{BLOCK_STACKS[match['stack']]}.{match['index']}.{BLOCK_KEYS[match['module']]}.{match['kind']}"
    return None


def split_weights(
    state_dict: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """
    Splits a state dict into renamed encoder weights, renamed target-encoder and predictor weights, and a count of
    the non-encoder tensors per top-level prefix.
    """
    encoder, pretraining, dropped = {}, {}, Counter()
    for key, value in state_dict.items():
        if key == "norm_stats":
            continue
        new_key = rename_key(key)
        if key.startswith(ENCODER_KEY_PREFIXES):
            if new_key is None:
                raise ValueError(f"Unrecognized encoder weight {key!r} in {path}: its encoder is not an M2D ViT.")
            check_encoder_tensor(key, value, path)
            encoder[new_key] = value
            continue
        dropped[key.split(".")[0]] += 1
        if key.startswith(PRETRAINING_KEY_PREFIXES):
            check_tensor(key, value, path, "pre-training weight")
            pretraining[new_key or key] = value
    if not encoder:
        raise ValueError(f"{path} holds no M2D encoder weights (cls_token, pos_embed, patch_embed, blocks, norm).")
    return encoder, pretraining, dict(sorted(dropped.items()))


def check_encoder_tensor(key: str, value: object, path: Path) -> None:
    """Fails unless an encoder weight is a non-empty floating-point tensor with the number of dimensions it needs."""
    check_tensor(key, value, path, "encoder weight")
    rank = encoder_rank(key)
    if value.dim() != rank:
        raise ValueError(f"{path}: encoder weight {key!r} must be a non-empty {rank}-d tensor, got {describe(value)}.")


def check_tensor(key: str, value: object, path: Path, kind: str) -> None:
    """Fails unless a weight is a non-empty floating-point tensor."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ValueError(f"{path}: {kind} {key!r} must be a floating-point tensor, got {describe(value)}.")
    if value.numel() == 0:
        raise ValueError(f"{path}: {kind} {key!r} must be a non-empty tensor, got {describe(value)}.")


def encoder_rank(key: str) -> int:
    """The number of dimensions of a known encoder weight in official names."""
    if key in TOP_LEVEL_RANKS:
        return TOP_LEVEL_RANKS[key]
    match = BLOCK_PATTERN.match(key)
    return 2 if match["kind"] == "weight" and match["module"] in BLOCK_MATRICES else 1


def describe(value: object) -> str:
    """A tensor's dtype and shape, or another value's type, for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def read_norm_stats(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[list[float], list[str]]:
    """`(mean, std)` of the checkpoint, or the M2D default with a note saying so."""
    if "norm_stats" not in state_dict:
        note = f"no norm_stats in the checkpoint; using the M2D default {DEFAULT_NORM_STATS}"
        return list(DEFAULT_NORM_STATS), [note]
    value = state_dict["norm_stats"]
    try:
        stats = torch.as_tensor(value).flatten()
    except (TypeError, RuntimeError):
        stats = None
    if stats is None or stats.dtype == torch.bool or stats.is_complex() or len(stats) != 2:
        raise ValueError(f"{path}: norm_stats must hold (mean, std) as two real numbers, got {describe(value)}.")
    mean, std = stats.double().tolist()
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"{path}: norm_stats must be finite with std > 0, got mean {mean} and std {std}.")
    return [mean, std], []


def check_finite(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Fails naming every floating-point tensor that holds NaN or Inf (it would give non-finite embeddings)."""
    bad = [
        key
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        shown = shortened(bad, most=10)
        raise ValueError(f"{path} holds NaN or Inf values in {len(bad)} tensors: {shown}. The checkpoint is damaged.")


def check_block_numbering(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """
    Fails when a block stack has a gap (blocks 0, 1, 3) or when the EMA target's depth differs from the online
    encoder's: a block missing from a damaged checkpoint would otherwise give a shallower encoder.
    """
    indices = {stack: set() for stack in BLOCK_STACKS}
    for key in state_dict:
        stack, _, rest = key.partition(".")
        index = rest.split(".", 1)[0]
        if stack in indices and index.isdecimal():
            indices[stack].add(int(index))
    for stack, found in indices.items():
        numbers = sorted(found)
        missing = next((expected for expected, number in enumerate(numbers) if number != expected), None)
        if missing is not None:
            raise ValueError(f"{path} lacks {stack} {missing} (found {stack} {numbers}): the checkpoint is incomplete.")
    online, target = len(indices["blocks"]), len(indices["target_blocks"])
    if target and online != target:
        raise ValueError(
            f"{path} holds {online} online encoder blocks but {target} target encoder blocks: the checkpoint is "
            "incomplete or mixes two models."
        )


def name_from_folder(path: Path) -> str:
    """
    The official name of a checkpoint: its folder's as the path names it (links not followed, as the original; a Hub
    cache links `<official folder>/weights.pth` to `blobs/<hash>`), else the folder a link to the file leads to.
    """
    named = Path(os.path.abspath(path)).parent.name
    resolved = path.resolve().parent.name
    return resolved if not NAME_PATTERN.match(named) and NAME_PATTERN.match(resolved) else named


def parse_checkpoint_name(name: str) -> dict:
    """Model, input size, patch size and sampling rate from an official name like `m2d_vit_base-80x608p16x16p16k`."""
    match = NAME_PATTERN.match(name)
    if not match:
        raise ValueError(
            f"Cannot read the input and patch size from the name {name!r}. "
            "Official M2D checkpoints sit in folders named "
            "'<model>-<mels>x<frames>p<patch_f>x<patch_t>[p16k|p32k[p<extra>...]][-...]'; pass that name explicitly "
            "(`name=` or `--name`), e.g. 'm2d_vit_base-80x608p16x16p16k'."
        )
    return {
        "model": match.group("model"),
        "input_size": [int(match.group("mels")), int(match.group("frames"))],
        "patch_size": [int(match.group("patch_f")), int(match.group("patch_t"))],
        "sampling_rate": 32000 if match.group("rate") == "32k" else 16000,
        "extra": match.group("extra")[1:].split("p") if match.group("extra") else [],
    }


def infer_config(
    encoder: dict[str, torch.Tensor], name_info: dict, norm_stats: list[float], path: Path
) -> RespM2DConfig:
    """
    Builds the config from the name and the tensor shapes (width, depth, heads, MLP size), after checking that the
    name's patch and input size fit the patch embedding and the positional table (so no model is built from sizes the
    weights do not have).
    """
    for key in (
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "encoder.layer.0.mlp.fc1.weight",
    ):
        if key not in encoder:
            raise ValueError(f"{path} lacks the encoder weight {key!r}; cannot infer the architecture.")
    positions, hidden_size = encoder["embeddings.position_embeddings"].shape[-2:]
    kernel = list(encoder["embeddings.patch_embeddings.projection.weight"].shape[-2:])
    (mels, frames), patch = name_info["input_size"], name_info["patch_size"]
    if kernel != patch:
        raise ValueError(f"{path}: the name says patch size {patch}, but the patch embedding has kernel {kernel}.")
    expected = 1 + (mels // patch[0]) * (frames // patch[1])
    if positions != expected:
        raise ValueError(
            f"{path}: the name says input size {[mels, frames]} with patch size {patch} ({expected} positions), "
            f"but pos_embed holds {positions} positions."
        )
    layers = {int(key.split(".")[2]) for key in encoder if key.startswith("encoder.layer.")}  # 0..N-1, checked
    try:
        return RespM2DConfig(
            sampling_rate=name_info["sampling_rate"],
            input_size=name_info["input_size"],
            patch_size=patch,
            hidden_size=hidden_size,
            num_hidden_layers=len(layers),
            num_attention_heads=max(1, hidden_size // 64),
            intermediate_size=encoder["encoder.layer.0.mlp.fc1.weight"].shape[0],
            qkv_bias="encoder.layer.0.attention.qkv.bias" in encoder,
            norm_mean=norm_stats[0],
            norm_std=norm_stats[1],
        )
    except ValueError as error:  # sizes from the name that the config refuses
        raise ValueError(f"{path}: {error}") from None


def check_checkpoint_fits(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path, architecture: str, optional: tuple = ()
) -> None:
    """
    Fails with the missing, unexpected and mis-shaped weights of `path` for `model`, built on the meta device by the
    caller so that only shapes are compared. The weights under a prefix in `optional` may be missing, but only all
    together (a target encoder or predictor is reused whole or made afresh).
    """
    expected = model.state_dict()
    absent = tuple(prefix for prefix in optional if not any(key.startswith(prefix) for key in weights))
    missing = sorted(key for key in set(expected) - set(weights) if not key.startswith(absent))
    unexpected = sorted(set(weights) - set(expected))
    misshaped = [
        f"{key}: checkpoint {tuple(weights[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(weights))
        if weights[key].shape != expected[key].shape
    ]
    problems = [f"missing: {shortened(missing)}"] * bool(missing)
    problems += [f"unexpected: {shortened(unexpected)}"] * bool(unexpected)
    problems += [f"wrong shape: {shortened(misshaped, separator='; ')}"] * bool(misshaped)
    if problems:
        raise ValueError(f"The weights of {path} do not fit {architecture}: {' | '.join(problems)}.")


def architecture_of(config: RespM2DConfig) -> str:
    """An encoder config's sizes, for messages."""
    return (
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, input {config.input_size}, "
        f"patch {config.patch_size}"
    )


def shortened(names: list[str], most: int = 6, separator: str = ", ") -> str:
    """The first `most` names, and how many more there are."""
    return separator.join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def convert_m2d_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    name: str | None = None,
    write_card: bool = True,
    overwrite: bool = False,
) -> ConversionReport:
    """
    Converts an official M2D checkpoint into a folder that loads with `AutoModel` / `AutoFeatureExtractor`
    (`trust_remote_code=True`): `config.json`, `model.safetensors`, `preprocessor_config.json`, the remote code and a
    model card.

    Args:
        checkpoint_path: the `.pth` file (full training checkpoint, encoder-only release or fine-tuned checkpoint).
        output_dir: folder to write.
        name (`str`, *optional*): official-style name giving the input and patch size and sampling rate
            (e.g. `m2d_vit_base-80x608p16x16p16k`); by default the checkpoint's parent folder name.
        write_card (`bool`, defaults to `True`): write `README.md` from the template in `hub_cards/`.
        overwrite (`bool`, defaults to `False`): replace a non-empty `output_dir` (refused otherwise).

    Returns:
        [`ConversionReport`]: the config, the dropped tensors per prefix and notes.
    """
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir)
    check_output_folder(output_dir, overwrite, inputs=(checkpoint_path,), replaced=True)
    checkpoint = read_m2d_checkpoint(checkpoint_path, name)
    config = checkpoint.config
    model = RespM2DModel(config)
    model.load_state_dict(checkpoint.encoder_weights)
    report = ConversionReport(
        source=checkpoint_path,
        output_dir=output_dir,
        config=config,
        sha256=file_sha256(checkpoint_path),
        dropped=checkpoint.dropped,
        notes=checkpoint.notes,
    )
    with atomic_folder(output_dir) as folder:
        model.save_pretrained(folder)
        RespM2DFeatureExtractor.from_model_config(config).save_pretrained(folder)
        if write_card:
            source = f"{checkpoint.name}/{checkpoint_path.name}"
            cards.write_card(folder, cards.encoder_card(config, source, report.sha256, name=output_dir.name))
    return report


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
