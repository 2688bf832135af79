"""The M2D (Masked Modeling Duo) ViT audio encoder as a Hugging Face model."""

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .audio_utils_resp_m2d import (
    check_sampling_rate,
    describe_source,
    has_arrays,
    item_duration,
    load_waveform,
    split_batch,
)
from .configuration_resp_m2d import RespM2DConfig, first_few, is_integer_at_least
from .feature_extraction_resp_m2d import LogMelOverflowError, RespM2DFeatureExtractor

logger = logging.get_logger(__name__)


def _is_tracing():
    """True under torch.compile and torch.export, where only the shape-only path may run."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


@dataclass
class RespM2DModelOutput(ModelOutput):
    r"""
    Outputs of [`RespM2DModel`]. Every output keeps one layout whatever the rest of the batch: chunk `c` of a clip
    always has `1 + F * time_patches_per_chunk` tokens, and the tokens a clip does not fill are zeros.

    last_hidden_state (`torch.FloatTensor` of shape `(batch, num_chunks, 1 + F * T_chunk, hidden)`):
        Token states after the final LayerNorm for every chunk (CLS first, patches in frequency-major order).
        Patch columns beyond a clip's frames, and chunks that hold none of its frames, are zeros.
    pooler_output (`torch.FloatTensor` of shape `(batch, pooled_size)`):
        Clip embedding under `config.pooling` (frequency-wise by default: F x hidden).
    frame_embeddings (`torch.FloatTensor` of shape `(batch, time_steps, F * hidden)`):
        Per patch column, the F frequency-band embeddings concatenated lowest band first; chunks joined in time.
        `time_steps` is the number of patch columns of the input's frames.
    frame_mask (`torch.BoolTensor` of shape `(batch, time_steps)`):
        True for the rows of `frame_embeddings` that belong to the clip; padded rows are zeros.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Token states after the embeddings and after every layer (before the final LayerNorm), each shaped like
        `last_hidden_state`. They are the tensors the next layer reads, so `retain_grad()` works on them.
        [`RespM2DModel.layer_output`] picks a layer by the original M2D's numbering.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Attention probabilities of every layer, `(batch, num_chunks, heads, tokens, tokens)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    frame_embeddings: torch.FloatTensor | None = None
    frame_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class RespM2DPatchEmbeddings(nn.Module):
    """Cuts log-mel chunks (..., n_mels, frames) into non-overlapping patches with a strided convolution."""

    def __init__(self, config):
        super().__init__()
        self.projection = nn.Conv2d(1, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, chunks):
        images = chunks.flatten(0, -3)[:, None].to(self.projection.weight.dtype)  # flatten: no size guards in export
        return self.projection(images).flatten(2).transpose(1, 2)


class RespM2DEmbeddings(nn.Module):
    """Patch embeddings plus the checkpoint's positional table, with the CLS token in front."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        num_patches = config.num_frequency_patches * config.time_patches_per_chunk
        self.patch_embeddings = RespM2DPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + num_patches, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def patch_positions(self, time_patches):
        """Positional table of the first `time_patches` columns of every frequency row (shorter chunks reuse them)."""
        table = self.position_embeddings[:, 1:].unflatten(1, (self.config.num_frequency_patches, -1))
        return table[:, :, :time_patches].flatten(1, 2)

    def forward(self, chunks):
        """Chunks (..., n_mels, frames) to tokens (..., 1 + F * frames // patch, hidden)."""
        patches = self.patch_embeddings(chunks)
        patches = patches + self.patch_positions(patches.shape[1] // self.config.num_frequency_patches)
        cls = (self.cls_token + self.position_embeddings[:, :1]).expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        return self.dropout(tokens.unflatten(0, chunks.shape[:-2]))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, token_mask=None, **kwargs):
    """
    Softmax attention written out; works on any leading dimensions, so the probabilities it returns are the
    tensors the output is computed from. `attention_mask` is additive (0 or the dtype's minimum); the rows of
    queries outside `token_mask` (padding, whose states are zeroed anyway) are zeroed so they read as no attention.
    Queries are scaled before the product, as in the original (timm's written-out attention); the softmax runs in
    the scores' dtype (its bf16 and fp16 kernels accumulate in float32), so no float32 copy of the scores is made.
    """
    if scaling != 1.0:  # 1.0 where a packed copy carries the scaling in its query weights
        query = query * scaling
    scores = torch.matmul(query, key.transpose(-2, -1))
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = scores.softmax(dim=-1)
    if token_mask is not None:
        probs = probs * token_mask[..., None, :, None].to(probs.dtype)
    context = torch.matmul(nn.functional.dropout(probs, p=dropout, training=module.training), value)
    return context.transpose(-3, -2), probs


class RespM2DAttention(nn.Module):
    """
    Multi-head self-attention with a fused query/key/value projection. The attention function follows
    `config._attn_implementation` ("eager", "sdpa", "flex_attention", ...); asking for attention probabilities
    uses the eager one, which returns them.
    """

    is_causal = False
    num_key_value_groups = 1

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, token_mask=None, output_attentions=False):
        """`hidden_states` (..., tokens, hidden); `token_mask` boolean (..., tokens), True where a key counts."""
        *lead, tokens, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(*lead, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.movedim(-3, 0).transpose(-3, -2).unbind(0)  # each (..., heads, tokens, head_dim)
        mask = None
        if token_mask is not None:
            mask = torch.zeros(token_mask.shape, dtype=query.dtype, device=query.device)
            mask = mask.masked_fill(~token_mask, torch.finfo(query.dtype).min)[..., None, None, :]
        dropout = self.dropout if self.training else 0.0
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        if output_attentions or attention is eager_attention_forward:
            context, probs = eager_attention_forward(
                self, query, key, value, mask, self.scaling, dropout, token_mask=token_mask
            )
        else:  # the shared implementations take (batch, heads, tokens, head_dim)
            flat = [tensor.flatten(0, -4) for tensor in (query, key, value)]
            if mask is not None:
                mask = mask.flatten(0, -4).expand(-1, 1, tokens, tokens)
            context, probs = attention(self, *flat, mask, scaling=self.scaling, dropout=dropout)
        return self.proj(context.reshape(*lead, tokens, width)), probs


class RespM2DMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.activation(self.fc1(hidden_states)))


class RespM2DLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block."""

    def __init__(self, config):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = RespM2DAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = RespM2DMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, token_mask=None, output_attentions=False):
        attended, probs = self.attention(self.layernorm_before(hidden_states), token_mask, output_attentions)
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states, probs


class RespM2DEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([RespM2DLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, token_mask=None, output_hidden_states=False, output_attentions=False):
        """Runs the blocks; with a `token_mask`, masked tokens are zeroed after every block (keys never see them)."""
        keep = None if token_mask is None else token_mask[..., None].to(hidden_states.dtype)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, probs = layer(hidden_states, token_mask, output_attentions)
            if keep is not None:
                hidden_states = hidden_states * keep
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        return hidden_states, all_hidden_states, all_attentions


def check_one_run_of_frames(attention_mask: torch.Tensor) -> None:
    """Raises ValueError unless every row of a (batch, frames) mask holds only 0 and 1, its 1s in one run."""
    other = (attention_mask != 0) & (attention_mask != 1)
    if bool(other.any()):
        values = [str(value) for value in torch.unique(attention_mask[other]).tolist()]
        raise ValueError(f"attention_mask must hold only 0 and 1, found {first_few(values, 3)}.")
    mask = attention_mask.to(torch.int8)
    runs = mask[:, 0] + (mask[:, 1:] > mask[:, :-1]).sum(-1)
    split = torch.nonzero(runs > 1).flatten().tolist()
    if split:
        raise ValueError(
            f"attention_mask row {split[0]} marks frames in more than one stretch: each clip must be one run of 1s, "
            "with padding (0s) only before and/or after it."
        )


def frames_first(input_features: torch.Tensor, attention_mask: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
    """Each clip's frames (its run of 1s in `attention_mask`) moved to the front of its row, zeros after them."""
    frames = torch.arange(input_features.shape[-1], device=input_features.device)
    first = attention_mask.to(torch.int8).argmax(-1)  # the first 1: 0 unless left-padded
    source = (frames[None, :] + first[:, None]).clamp(max=input_features.shape[-1] - 1)
    moved = input_features.gather(-1, source[:, None, :].expand_as(input_features))
    return moved * (frames[None, :] < num_frames[:, None])[:, None, :].to(input_features.dtype)


class RespM2DPreTrainedModel(PreTrainedModel):
    config_class = RespM2DConfig
    config: RespM2DConfig
    base_model_prefix = "resp_m2d"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["RespM2DEmbeddings", "RespM2DLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Weights a folder may lack or carry beyond this class: a classification head (new, or dropped).
    _head_weights = ("classifier.", "head_norm.", "layer_weights")

    def __init__(self, config, *inputs, **kwargs):
        config.check_settings()
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """
        As in Transformers, with clearer errors for local folders: a path that names no folder (`./model`, `/data/m`,
        not a Hub repo id) is a FileNotFoundError instead of a complaint about repo ids, and a damaged index of
        sharded weights is refused naming the file.
        """
        if pretrained_model_name_or_path is not None:
            folder = Path(pretrained_model_name_or_path)
            if folder.is_dir():
                check_weights_index(folder / (kwargs.get("subfolder") or ""))
            elif not folder.exists() and looks_like_a_path(str(pretrained_model_name_or_path)):
                raise FileNotFoundError(f"{pretrained_model_name_or_path}: no such model folder.")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _load_pretrained_model(cls, model, state_dict, checkpoint_files, load_config, *args, **kwargs):
        """
        As in Transformers, then checked while the weights the folder lacks are still unmade (on the meta device): a
        damaged weights file, weights that do not fit the configuration (encoder weights missing, unexpected or of
        another shape; a head of another shape without `ignore_mismatched_sizes=True`) and NaN or infinite weights are
        one-line errors naming the folder or file, instead of a model with random blocks or one built to a size the
        weights never had. Adapter weights (`load_adapter`, with `expected_keys`) load as in Transformers.
        """
        load = functools.partial(super()._load_pretrained_model, model, state_dict, checkpoint_files, load_config)
        if args or kwargs.get("expected_keys") is not None:
            return load(*args, **kwargs)
        files = weight_files_by_key(checkpoint_files or (), load_config.weights_only) if state_dict is None else {}
        loaded = load(*args, **kwargs)
        source = load_config.pretrained_model_name_or_path
        if source is not None:  # without a folder, missing weights are initialized as in Transformers
            info = loaded[0] if isinstance(loaded, tuple) else loaded  # (info, offload index) in newer Transformers
            check_weights_fit(model, info, source, load_config.ignore_mismatched_sizes, cls._head_weights)
        check_weights_finite(model, files, source or "state_dict")
        return loaded

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RespM2DEmbeddings):
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
        if module is getattr(self, "classifier", None):
            init.trunc_normal_(module.weight, std=2e-5)  # as the original M2D/EVAR head
            init.zeros_(module.bias)
        if isinstance(module, RespM2DForAudioClassification) and module.layer_weights is not None:
            init.zeros_(module.layer_weights)


def _without_prefix(key: str) -> str:
    return key.removeprefix(RespM2DPreTrainedModel.base_model_prefix + ".")


def looks_like_a_path(name: str) -> bool:
    """A local path rather than a Hub repo id (`name` or `namespace/name`): absolute, relative, or of several parts."""
    return name.startswith((".", "/")) or "\\" in name or name.count("/") > 1


def sharded_weights_index(folder: Path) -> Path | None:
    """The index of sharded weights Transformers reads in `folder`: only where no unsharded file comes before it."""
    for weights in ("model.safetensors", "pytorch_model.bin"):
        if (folder / weights).is_file():
            return None
        if (folder / f"{weights}.index.json").is_file():
            return folder / f"{weights}.index.json"
    return None


def check_weights_index(folder: Path) -> None:
    """
    Raises ValueError naming the index of sharded weights in `folder` when it is not a JSON object with a
    `weight_map` of weight names to shard files and a `metadata` object: Transformers' own errors (a KeyError, a
    TypeError) would not say which file is damaged.
    """
    path = sharded_weights_index(folder)
    if path is None:
        return
    try:
        content = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it or save the model again.") from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    is_index = (
        isinstance(weight_map, dict)
        and len(weight_map) > 0
        and all(isinstance(name, str) and isinstance(file, str) for name, file in weight_map.items())
        and isinstance(content.get("metadata"), dict)
    )
    if not is_index:
        raise ValueError(
            f"{path} is not an index of sharded weights: it must be a JSON object with a 'weight_map' of weight "
            "names to shard files and a 'metadata' object; restore it or save the model again."
        )


def weight_files_by_key(files: Iterable[str], weights_only: bool) -> dict[str, str]:
    """
    The file of every tensor in safetensors or (with `weights_only`) PyTorch weight files, read from their headers
    without loading the data; a damaged file is an OSError naming it.
    """
    found = {}
    for file in files:
        try:
            if file.endswith(".safetensors"):
                with safe_open(file, framework="pt") as weights:
                    keys = list(weights.keys())
            elif file.endswith(".bin") and weights_only:
                keys = list(torch.load(file, map_location="meta", weights_only=True))
            else:
                continue
        except Exception as error:  # damaged files fail in many ways inside safetensors and torch.load
            raise OSError(f"{file} is not a readable weights file ({type(error).__name__}: {error}).") from None
        found |= {_without_prefix(key): file for key in keys}
    return found


def check_weights_fit(model: nn.Module, info: Any, source: str, ignore_mismatched_sizes: bool, head_weights: tuple):
    """
    Raises when the weights loaded from `source` (Transformers' loading info) do not fit the model its configuration
    built: ValueError for encoder weights missing or unexpected, RuntimeError (as Transformers) for other shapes unless
    `ignore_mismatched_sizes`.
    """

    def encoder_keys(keys):
        return [_without_prefix(key) for key in keys if not _without_prefix(key).startswith(head_weights)]

    fix = "restore the folder's config.json (or leave out the from_pretrained overrides) or re-convert"
    for kind, keys in (("missing", info.missing_keys), ("unexpected", info.unexpected_keys)):
        if encoder_keys(keys):
            raise ValueError(
                f"{source}: the configuration does not match the weights ({kind} keys: {_listed(encoder_keys(keys))}); "
                f"{fix}."
            )
    expected = model.state_dict()
    shapes = {
        _without_prefix(key): f"{_without_prefix(key)} {tuple(found)} in the weights, "
        f"{tuple(expected[key].shape)} configured"
        for key, found, *_ in info.mismatched_keys
    }
    if not shapes or ignore_mismatched_sizes:  # mismatched weights are then initialized afresh, as in Transformers
        return
    encoder_shapes = [shapes[key] for key in encoder_keys(shapes)]
    if encoder_shapes:
        raise RuntimeError(
            f"{source}: the configuration does not match the weights (other shapes: {_listed(encoder_shapes)}); {fix}."
        )
    raise RuntimeError(
        f"{source}: the head in the weights does not fit the configured one ({_listed(shapes.values())}); pass "
        "ignore_mismatched_sizes=True to start a new head, or restore the folder's config.json."
    )


def check_weights_finite(model: nn.Module, files: dict[str, str], source: str):
    """Raises ValueError naming the file (or `source`) and the loaded weights that hold NaN or infinity."""
    bad = {
        key: value.dtype
        for key, value in model.state_dict().items()
        if value.is_floating_point() and value.device.type != "meta" and not torch.isfinite(value).all()
    }
    if not bad:
        return
    first, dtype = next(iter(bad.items()))
    cause = "the file is damaged or training diverged"
    if dtype in (torch.float16, torch.bfloat16):
        cause = f"in {dtype} (the dtype they were loaded in) values beyond its range are infinite, or {cause}"
    where = files.get(_without_prefix(first), source)
    raise ValueError(f"{where}: weights hold NaN or infinite values ({_listed(bad)}); {cause}.")


def _listed(names: Iterable[str], most: int = 6) -> str:
    """Names in natural order (layer 2 before layer 10), at most `most` of them."""
    ordered = sorted(
        names, key=lambda name: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    )
    return first_few(ordered, most)


class RespM2DModel(RespM2DPreTrainedModel):
    """
    The M2D ViT encoder. Log-mel input of any length is cut into consecutive chunks of `config.input_size[1]` frames
    and the last chunk is padded to whole patches, as the original runtime does. Outputs keep the full chunk layout;
    a clip's values do not depend on the rest of the batch.

    In eager mode, only the chunks that hold frames are encoded, in groups of equal width (so equal-length clips
    run unpadded and unmasked) of at most `config.chunks_per_pass` chunks. When per-layer outputs are asked for, or
    under `torch.compile` / `torch.export`, every chunk runs at full width with a key mask: one path that depends on
    shapes only, whose per-layer states are the tensors the next layer reads.
    """

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = RespM2DEmbeddings(config)
        self.encoder = RespM2DEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> RespM2DModelOutput | tuple:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, n_mels, frames)`):
            Normalized log-mel features from [`RespM2DFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch, frames)`, *optional*):
            1 for a clip's frames, 0 for padding before (left padding) or after them (right padding); each clip is
            one run of 1s. A clip is encoded from its first frame on, so its outputs are the same whichever side
            was padded.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_input(input_features, attention_mask)

        chunks, columns = self._split_into_chunks(input_features, attention_mask)
        if output_hidden_states or output_attentions or _is_tracing():
            last_hidden_state, all_hidden, all_attentions = self.encode_chunks(
                chunks, self._token_mask(columns, chunks.shape[-1]), output_hidden_states, output_attentions
            )
        else:
            last_hidden_state, all_hidden, all_attentions = self._encode_in_groups(chunks, columns), None, None
        frame_mask = self._frame_mask(columns, input_features.shape[-1])
        frame_embeddings = self.stack_frequency_bands(last_hidden_state, frame_mask)
        output = RespM2DModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=self.pool(last_hidden_state, frame_mask, frame_embeddings),
            frame_embeddings=frame_embeddings,
            frame_mask=frame_mask,
            hidden_states=all_hidden,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()

    def valid_patches_per_chunk(self, num_frames: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """
        Patch columns (batch, num_chunks) that each chunk of each clip of `num_frames` frames contributes, as the
        original runtime (`encode_lms`) counts them: it pads `(p - T % unit % p) % p` frames at the end and slices
        every `unit` frames, so a full chunk gives `unit // p` columns (the convolution drops the frames left over)
        and the last piece of `r` frames gives `ceil(r / p)` columns, at most `unit // p` (a 1-frame piece gives one).
        """
        unit, patch = self.config.unit_frames, self.config.patch_size[1]
        starts = torch.arange(num_chunks, device=num_frames.device) * unit
        frames = (num_frames[:, None] - starts[None, :]).clamp(0, unit)
        return torch.div(frames + patch - 1, patch, rounding_mode="floor").clamp(max=self.config.time_patches_per_chunk)

    def layer_output(self, outputs: RespM2DModelOutput, layer: int) -> torch.Tensor:
        """
        Per-chunk token states of layer `layer` in the original M2D numbering (`return_layers`, the paper's layer
        sweeps): 0..L-2 are blocks 1..L-1 before the final LayerNorm (`hidden_states[layer + 1]`), L-1 (or -1) is the
        last block after it (`last_hidden_state`). Negative numbers count from the end.
        """
        depth = self.config.num_hidden_layers
        if not -depth <= layer < depth:
            raise ValueError(f"Layer {layer} does not exist: this encoder has layers 0..{depth - 1} (or -{depth}..-1).")
        layer %= depth
        if layer == depth - 1:
            return outputs.last_hidden_state
        if outputs.hidden_states is None:
            raise ValueError(f"Layer {layer} needs the per-layer states: call the model with output_hidden_states=True")
        return outputs.hidden_states[layer + 1]

    def step_frames(self, num_frames: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The log-mel frames each time step (patch column of `frame_embeddings`) covers, for clips of `num_frames`
        frames: `(first, end)` of shape (batch, num_steps), end exclusive and clipped to the clip's last frame. Each
        chunk of `unit_frames` frames holds `unit_frames // patch` steps (frames a full chunk leaves over are unused).
        """
        patch_frames = self.config.patch_size[1]
        steps_per_chunk = self.config.unit_frames // patch_frames
        index = torch.arange(num_steps, device=num_frames.device)
        first = (index // steps_per_chunk) * self.config.unit_frames + (index % steps_per_chunk) * patch_frames
        end = torch.minimum(first[None, :] + patch_frames, num_frames[:, None])
        return first[None, :].expand_as(end), end

    def _split_into_chunks(self, input_features, attention_mask):
        """Chunks (batch, num_chunks, n_mels, whole-patch frames) of the padded input and their valid columns."""
        frames = input_features.shape[-1]
        if attention_mask is None:
            num_frames = torch.full(input_features.shape[:1], frames, device=input_features.device)
        else:
            num_frames = attention_mask.sum(-1).long()
            input_features = frames_first(input_features, attention_mask, num_frames)
        unit = self.config.unit_frames
        num_chunks = (frames + unit - 1) // unit
        # Time-major, so that chunks are slices and flattening them is a view (no size guards in torch.export).
        padded = nn.functional.pad(input_features.transpose(1, 2), (0, 0, 0, num_chunks * unit - frames))
        width = self.config.time_patches_per_chunk * self.config.patch_size[1]
        chunks = padded.unflatten(1, (num_chunks, unit))[:, :, :width].transpose(-1, -2)
        return chunks, self.valid_patches_per_chunk(num_frames, num_chunks)

    def _token_mask(self, columns, frames):
        """Boolean (..., 1 + F * columns_per_chunk) of the tokens that hold a clip's frames (CLS: chunk not empty)."""
        time_patches = frames // self.config.patch_size[1]
        patches = torch.arange(time_patches, device=columns.device) < columns[..., None]
        patches = patches.unsqueeze(-2).expand(*columns.shape, self.config.num_frequency_patches, time_patches)
        return torch.cat([(columns > 0)[..., None], patches.flatten(-2)], dim=-1)

    def encode_chunks(
        self,
        chunks: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """
        Embeddings, blocks and final LayerNorm of log-mel chunks (..., n_mels, frames): returns the final token
        states, and the per-layer states and attentions when asked. With a boolean `token_mask` (..., tokens),
        masked tokens are not attended to and come out zero.
        """
        hidden = self.embeddings(chunks)
        if token_mask is not None:
            hidden = hidden * token_mask[..., None].to(hidden.dtype)
        hidden, all_hidden, all_attentions = self.encoder(hidden, token_mask, output_hidden_states, output_attentions)
        hidden = self.layernorm(hidden)
        if token_mask is not None:
            hidden = hidden * token_mask[..., None].to(hidden.dtype)
        return hidden, all_hidden, all_attentions

    def _encode_in_groups(self, chunks, columns):
        """
        Final token states of the chunks that hold frames, encoded in groups of equal width, at most
        `config.chunks_per_pass` at a time (bounded memory for long recordings), placed into the full layout.
        """
        clip, chunk = torch.nonzero(columns > 0, as_tuple=True)
        widths = columns[clip, chunk]
        order = torch.argsort(widths, descending=True, stable=True)
        clip, chunk, widths = clip[order], chunk[order], widths[order].tolist()
        size = self.config.chunks_per_pass or len(widths)
        patch, full = self.config.patch_size[1], self.config.time_patches_per_chunk
        states, start = None, 0
        while start < len(widths):
            width = widths[start]
            stop = min(start + size, start + widths[start:].count(width))  # sorted: equal widths are consecutive
            group = chunks[clip[start:stop], chunk[start:stop], :, : width * patch]
            encoded = self._pad_columns(self.encode_chunks(group)[0], full)
            if states is None:  # in the encoder's output dtype (autocast may change it)
                states = encoded.new_zeros(*columns.shape, *encoded.shape[1:])
            states[clip[start:stop], chunk[start:stop]] = encoded  # each group straight into place: one copy in memory
            start = stop
        return states

    def _pad_columns(self, tokens, time_patches):
        """Pads token states (n, 1 + F * w, D) with zero patch columns to (n, 1 + F * time_patches, D)."""
        patches = tokens[:, 1:].unflatten(1, (self.config.num_frequency_patches, -1))
        padded = nn.functional.pad(patches, (0, 0, 0, time_patches - patches.shape[2]))
        return torch.cat([tokens[:, :1], padded.flatten(1, 2)], dim=1)

    def _frame_mask(self, columns, frames):
        """
        (batch, time steps) mask of each clip's patch columns; time steps: the columns of `frames` frames (all
        columns of all chunks under torch.compile / torch.export, whose graphs must not depend on that count).
        """
        unit, patch, full = self.config.unit_frames, self.config.patch_size[1], self.config.time_patches_per_chunk
        steps = columns.shape[1] * full
        if not _is_tracing():
            last_piece = frames - (columns.shape[1] - 1) * unit
            steps -= full - min((last_piece + patch - 1) // patch, full)
        return torch.arange(steps, device=columns.device)[None, :] < columns.sum(1)[:, None]

    def _check_input(self, input_features, attention_mask):
        if input_features.ndim != 3 or input_features.shape[1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must be (batch, {self.config.num_mel_bins}, frames), "
                f"got {tuple(input_features.shape)}."
            )
        if attention_mask is not None and attention_mask.shape != (input_features.shape[0], input_features.shape[2]):
            raise ValueError(
                f"attention_mask must be (batch, frames) = {(input_features.shape[0], input_features.shape[2])}, "
                f"got {tuple(attention_mask.shape)}."
            )
        if input_features.shape[2] == 0:
            raise ValueError("input_features has no frames (an empty input).")
        if _is_tracing():  # the checks below read values: eager only, so compiled graphs do not break here
            return
        if attention_mask is None:
            self._warn_if_padded(input_features)
            return
        check_one_run_of_frames(attention_mask)
        empty = torch.nonzero(attention_mask.sum(-1) == 0).flatten().tolist()
        if empty:
            clips = f"Clip {empty[0]} has" if len(empty) == 1 else f"Clips {', '.join(map(str, empty))} have"
            raise ValueError(f"{clips} no frames (an all-zero attention_mask row).")

    def _warn_if_padded(self, input_features):
        """Warns once when some rows begin or end in all-zero frames (the extractor's padding) and others do not."""
        padded = (input_features[:, :, [0, -1]] == 0).all(dim=1).any(dim=1)
        if bool(padded.any()) and not bool(padded.all()):
            logger.warning_once(
                "input_features look padded (some rows begin or end in all-zero frames) but no attention_mask was "
                "passed: padding then counts as audio and changes pooler_output. Pass the extractor's attention_mask."
            )

    def stack_frequency_bands(self, hidden_state, frame_mask):
        """
        Frame embeddings of per-chunk token states (batch, chunks, tokens, hidden): per patch column the F band
        embeddings concatenated lowest band first, chunks joined in time, padded steps zeroed.
        """
        tokens = hidden_state[:, :, 1:].unflatten(2, (self.config.num_frequency_patches, -1))  # (B, chunks, F, T, D)
        frames = tokens.permute(0, 1, 3, 2, 4).flatten(3).flatten(1, 2)  # (B, chunks * T, F * D)
        frames = frames[:, : frame_mask.shape[1]]
        return frames * frame_mask[..., None].to(frames.dtype)

    def pool(self, hidden_state, frame_mask, frame_embeddings=None):
        """
        Clip embedding of per-chunk token states (the last layer's or any other): frequency-wise time mean, flat
        token mean, or CLS mean over the clip's chunks (see `config.pooling`). `frame_embeddings`, when given, are
        the already stacked frames of `hidden_state`.
        """
        steps = frame_mask.sum(1, keepdim=True)
        if self.config.pooling == "cls":
            time_patches = (hidden_state.shape[2] - 1) // self.config.num_frequency_patches
            chunk_starts = torch.arange(hidden_state.shape[1], device=steps.device) * time_patches
            chunk_mask = (chunk_starts[None, :] < steps).to(hidden_state.dtype)
            return (hidden_state[:, :, 0] * chunk_mask[..., None]).sum(1) / chunk_mask.sum(1, keepdim=True)
        if frame_embeddings is None:
            frame_embeddings = self.stack_frequency_bands(hidden_state, frame_mask)
        pooled = frame_embeddings.sum(1) / steps.to(hidden_state.dtype)
        if self.config.pooling == "mean":
            return pooled.unflatten(-1, (self.config.num_frequency_patches, -1)).mean(1)
        return pooled

    def embed(
        self,
        audio: Any,
        sampling_rate: int | None = None,
        batch_size: int = 8,
        feature_extractor: RespM2DFeatureExtractor | None = None,
        downmix: bool = False,
        progress: bool | None = None,
        autocast_dtype: torch.dtype | None = None,
        layer: int = -1,
    ) -> torch.Tensor:
        """
        Clip embeddings (`pooler_output`) for one clip or a list of clips of any lengths and sampling rates.

        Args:
            audio: a 1-D array or tensor, a file path, encoded bytes (WAV, FLAC, ...), a `{"array",
                "sampling_rate"}` dict, a torchcodec `AudioDecoder` (as `datasets` yields), or a list of those.
            sampling_rate (`int`, *optional*): rate of array inputs. Files, bytes, dicts and decoders carry their own
                rate; when no input is an array, a `sampling_rate` passed with them must agree with it.
            batch_size (`int`, defaults to 8): clips per forward pass; clips are grouped by length to limit padding.
            feature_extractor (*optional*): defaults to the one described by `self.config`; one whose front end
                differs from the config's is an error.
            downmix (`bool`, defaults to `False`): average the channels of multichannel input.
            progress (`bool`, *optional*): show a progress bar; by default shown when there is more than one batch.
            autocast_dtype (`torch.dtype`, *optional*): run the encoder under `torch.autocast` in this dtype, e.g.
                `torch.bfloat16`. A model loaded with `dtype=torch.bfloat16` (or the package's `quantize(model,
                "bf16")`) is faster at the same accuracy: autocast re-casts the float32 weights on every call.
            layer (`int`, defaults to -1): the layer to pool, in the original M2D numbering of `layer_output`; the
                default, the last, gives `pooler_output`.

        Returns:
            `torch.FloatTensor` of shape `(num_clips, pooled_size)` on the CPU, in the input order. Clips are decoded
            one batch at a time, so only a batch of audio is in memory.
        """
        if isinstance(audio, (list, tuple)) and len(audio) == 0:
            raise ValueError("embed() got an empty list: pass at least one clip.")
        if sampling_rate is not None:
            sampling_rate = check_sampling_rate(sampling_rate)
        if feature_extractor is None:
            feature_extractor = RespM2DFeatureExtractor.from_model_config(self.config)
        # By name: the package's class and a folder's remote-code copy (AutoFeatureExtractor) are distinct classes.
        if type(feature_extractor).__name__ != RespM2DFeatureExtractor.__name__:
            raise ValueError(
                f"feature_extractor must be a RespM2DFeatureExtractor, got {type(feature_extractor).__name__}."
            )
        feature_extractor.check_matches(self.config)
        items = split_batch(audio, downmix=downmix)
        names = ["audio"] if len(items) == 1 else [f"Input {index}" for index in range(len(items))]
        durations = [item_duration(item, sampling_rate, name) for item, name in zip(items, names)]
        rate_of_arrays_only = has_arrays(items)

        def load_clip(index: int) -> np.ndarray:
            rate = feature_extractor.sampling_rate
            waveform = load_waveform(items[index], sampling_rate, rate, downmix, names[index], rate_of_arrays_only)
            feature_extractor.check_long_enough(waveform, describe_source(items[index], names[index]))
            return waveform

        (embeddings,) = embed_clips(
            self,
            load_clip,
            len(items),
            feature_extractor,
            durations,
            layers=[layer],
            batch_size=batch_size,
            progress=progress,
            autocast_dtype=autocast_dtype,
            describe=lambda index: describe_source(items[index], names[index]),
        ).values()
        return embeddings


@torch.no_grad()
def embed_clips(
    model: RespM2DModel,
    load_clip: Callable[[int], np.ndarray],
    num_clips: int,
    feature_extractor: RespM2DFeatureExtractor,
    durations: Sequence[float] | None = None,
    layers: Sequence[int] = (-1,),
    batch_size: int = 8,
    progress: bool | None = None,
    autocast_dtype: torch.dtype | None = None,
    describe: Callable[[int], str] = "clip {}".format,
) -> dict[int, torch.Tensor]:
    """
    Clip embeddings at each of `layers` (original M2D numbers, see `RespM2DModel.layer_output`) of `num_clips` clips,
    one forward pass per batch: the loop behind `RespM2DModel.embed` and the linear-probe benchmark. Returns
    `{layer 0..L-1: (num_clips, pooled_size) float32 CPU tensor}` in input order; the last layer is `pooler_output`.

    `load_clip(index)` returns a clip as mono float32 audio at the extractor's rate, decoded and cropped or padded as
    the caller wants; it is called one batch at a time, so only a batch of audio is in memory. With `durations`, clips
    are batched shortest first (less padding), else in input order. The model runs in eval mode (its mode is restored),
    under one `torch.autocast` region when `autocast_dtype` is given; `progress=None` shows a bar for several batches.
    A clip whose log-mel overflows or whose embedding is not finite is an error that `describe(index)` names.
    """
    depth = model.config.num_hidden_layers
    if not is_integer_at_least(batch_size, 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not all(is_integer_at_least(layer, -depth) and layer < depth for layer in layers):
        raise ValueError(f"layers={list(layers)}: this encoder has layers 0..{depth - 1} (or -{depth}..-1).")
    layers = list(dict.fromkeys(layer % depth for layer in layers))
    order = list(range(num_clips)) if durations is None else sorted(range(num_clips), key=durations.__getitem__)
    batches = [order[start : start + batch_size] for start in range(0, num_clips, batch_size)]
    rate = feature_extractor.sampling_rate
    needs_hidden_states = any(layer != depth - 1 for layer in layers)
    rows = {layer: [None] * num_clips for layer in layers}
    was_training = model.training
    model.eval()  # no dropout, whatever mode the model is in
    # One autocast region for all batches: the weights are cast to `autocast_dtype` once, not once per batch.
    autocast = torch.autocast(model.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    try:
        with autocast:
            for batch in progress_bar(batches, len(batches) > 1 if progress is None else progress, "Embedding"):
                waveforms = [load_clip(index) for index in batch]
                try:
                    inputs = feature_extractor(
                        waveforms, sampling_rate=rate, return_attention_mask=True, device=model.device
                    )
                except LogMelOverflowError as error:  # named by its place in the batch: name it as the caller does
                    raise error.renamed(describe(batch[error.index])) from None
                del waveforms  # the audio is freed before the encoder runs
                outputs = model(**inputs, output_hidden_states=needs_hidden_states, output_attentions=False)
                for layer in layers:
                    embeddings = _pooled_layer(model, outputs, layer).float().cpu()
                    check_finite_embeddings(embeddings, batch, describe, layer)
                    for index, embedding in zip(batch, embeddings):
                        rows[layer][index] = embedding
    finally:
        model.train(was_training)
    return {layer: torch.stack(embeddings) for layer, embeddings in rows.items()}


def check_finite_embeddings(
    embeddings: torch.Tensor, batch: list[int], describe: Callable[[int], str], layer: int
) -> None:
    """Refuses NaN or Inf in the embeddings of `layer` of the clips `batch`, naming the first such clip (`describe`)."""
    finite = torch.isfinite(embeddings).all(1)
    if not finite.all():
        name = describe(batch[int((~finite).nonzero()[0])])
        raise ValueError(
            f"The layer-{layer} embedding of {name} holds NaN or Inf: the model's weights (or its dtype) overflow on "
            "it; check the weights with a float32 model."
        )


def _pooled_layer(model: RespM2DModel, outputs: RespM2DModelOutput, layer: int) -> torch.Tensor:
    """The clip embedding of layer `layer` (0..L-1): `pooler_output` for the last, whose frames are already stacked."""
    if layer == model.config.num_hidden_layers - 1:
        return outputs.pooler_output
    return model.pool(model.layer_output(outputs, layer), outputs.frame_mask)


class RespM2DForAudioClassification(RespM2DPreTrainedModel):
    """
    The M2D encoder with the head of the original M2D/EVAR runtime: the clip embedding of `config.pooling`
    (frequency-wise by default) of the layer chosen by `config.classifier_layer`, a non-affine BatchNorm1d and a
    linear layer. The loss follows `config.problem_type` (single-label: cross-entropy, multi-label: BCE,
    regression: MSE), inferred from `num_labels` and the label dtype when unset, as in built-in models.
    `RespM2DForAudioClassification.from_pretrained(encoder_folder, num_labels=..., id2label=...)` starts a new head.
    """

    def __init__(self, config):
        super().__init__(config)
        self.resp_m2d = RespM2DModel(config)
        weighted = config.classifier_layer == "weighted"
        self.layer_weights = nn.Parameter(torch.zeros(config.num_hidden_layers)) if weighted else None
        self.head_norm = nn.BatchNorm1d(config.pooled_size, affine=False)
        self.classifier = nn.Linear(config.pooled_size, config.num_labels)
        self.post_init()
        if config.freeze_encoder:
            self.freeze_encoder()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) with output_loading_info
        if model.config.freeze_encoder:  # loading re-creates the parameters, so freeze again
            model.freeze_encoder()
        return loaded

    def freeze_encoder(self):
        """Stops gradients to the encoder (linear probing); the head, and layer weights if any, still train."""
        self.config.freeze_encoder = True
        self.resp_m2d.requires_grad_(False)

    def layer_states(self, outputs):
        """Per-chunk token states of the layer the head reads (see `config.classifier_layer`)."""
        layer = self.config.classifier_layer
        if layer == "weighted":  # the original's L layer outputs: blocks 1..L-1 before the final LayerNorm, then after
            layers = (*outputs.hidden_states[1:-1], outputs.last_hidden_state)
            return (torch.stack(layers, dim=-1) * self.layer_weights.softmax(0)).sum(-1)
        return self.resp_m2d.layer_output(outputs, -1 if layer is None else layer)

    def _reads_hidden_states(self):
        layer, depth = self.config.classifier_layer, self.config.num_hidden_layers
        return layer == "weighted" or (layer is not None and layer % depth != depth - 1)

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        labels (`torch.Tensor`, *optional*):
            Class indices of shape `(batch,)` for single-label, multi-hot floats `(batch, num_labels)` for multi-label,
            or float targets `(batch,)` / `(batch, num_labels)` for regression.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            outputs = self.resp_m2d(
                input_features,
                attention_mask=attention_mask,
                output_hidden_states=output_hidden_states or self._reads_hidden_states(),
                output_attentions=output_attentions,
                return_dict=True,
            )
        if self._reads_hidden_states():
            pooled = self.resp_m2d.pool(self.layer_states(outputs), outputs.frame_mask)
        else:  # the final output's pooling is the encoder's pooler_output: no second stack of the frames
            pooled = outputs.pooler_output
        logits = self.classifier(self.normalize(pooled))
        output = SequenceClassifierOutput(
            loss=None if labels is None else self.loss(logits, labels),
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    def normalize(self, pooled):
        """The head's BatchNorm; a lone clip in training (e.g. an epoch's last batch) uses the running statistics."""
        if self.training and pooled.shape[0] == 1:
            norm = self.head_norm
            return nn.functional.batch_norm(pooled, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
        return self.head_norm(pooled)

    def loss(self, logits, labels):
        """Loss of `config.problem_type`, set from `num_labels` and the label dtype on first use when unset."""
        if self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif not labels.is_floating_point():
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view_as(logits.squeeze(-1)))
        if self.config.problem_type == "single_label_classification":
            return nn.functional.cross_entropy(logits, labels.view(-1).long())
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    def frame_logits(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """
        Time-resolved scores: the clip head applied to every time step (patch column, 160 ms for 16x16 patches at
        16 kHz) on its own. This is the trained clip classifier read step by step, not a trained event detector: a
        step's logits say how the head would label a clip that sounded like that step throughout.

        Per step, the head reads what `config.pooling` averages over time: the F band embeddings concatenated
        ("frequency") or their mean ("mean"), of the layer chosen by `config.classifier_layer`, normalized with the
        head's running statistics (as in evaluation). The head is affine, so in evaluation the clip logits are the mean
        of the step logits over the clip's steps. `pooling="cls"` has one CLS token per chunk, not per step: refused.

        Returns:
            `dict` with `logits` (batch, num_labels): the clip logits, as `forward` gives in evaluation;
            `step_logits` (batch, steps, num_labels), zeros at padded steps; `step_mask` (batch, steps), True for the
            clip's steps; `step_start` and `step_end` (batch, steps): each step's span in seconds, from the log-mel
            frames it covers (the last step ends at the clip's last frame; padded steps are 0).
        """
        if self.config.pooling == "cls":
            raise ValueError(
                "frame_logits() needs per-step embeddings, but this model pools the CLS token (pooling='cls'), "
                "which exists once per chunk, not per time step: use a model with pooling='frequency' or 'mean'."
            )
        outputs = self.resp_m2d(
            input_features,
            attention_mask=attention_mask,
            output_hidden_states=self._reads_hidden_states(),
            return_dict=True,
        )
        states = self.layer_states(outputs)
        step_mask = outputs.frame_mask
        frames = self.resp_m2d.stack_frequency_bands(states, step_mask)  # (batch, steps, F * hidden)
        steps = frames
        if self.config.pooling == "mean":
            steps = frames.unflatten(-1, (self.config.num_frequency_patches, -1)).mean(-2)
        norm = self.head_norm

        def head(pooled):  # the running statistics, so that steps do not normalize each other
            mean, var = norm.running_mean, norm.running_var
            return self.classifier(nn.functional.batch_norm(pooled, mean, var, training=False, eps=norm.eps))

        step_logits = head(steps.flatten(0, 1)).unflatten(0, steps.shape[:2]) * step_mask[..., None]
        clip_logits = head(self.resp_m2d.pool(states, step_mask, frames))

        if attention_mask is None:
            num_frames = torch.full_like(step_mask[:, 0], input_features.shape[-1], dtype=torch.long)
        else:
            num_frames = attention_mask.sum(-1).long()
        first_frame, end_frame = self.resp_m2d.step_frames(num_frames, step_mask.shape[1])
        seconds_per_frame = self.config.hop_length / self.config.sampling_rate
        return {
            "logits": clip_logits,
            "step_logits": step_logits,
            "step_mask": step_mask,
            "step_start": first_frame * seconds_per_frame * step_mask,
            "step_end": end_frame * seconds_per_frame * step_mask,
        }


def progress_bar(iterable: Iterable, show: bool, desc: str) -> Iterable:
    """`iterable` wrapped in a tqdm progress bar labelled `desc` when `show`, else as it is."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)


__all__ = [
    "RespM2DForAudioClassification",
    "RespM2DModel",
    "RespM2DModelOutput",
    "RespM2DPreTrainedModel",
    "embed_clips",
]
