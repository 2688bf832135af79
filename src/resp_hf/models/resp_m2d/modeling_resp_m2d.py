"""The M2D (Masked Modeling Duo) ViT audio encoder as a Hugging Face model."""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput

from .audio_utils_resp_m2d import check_sampling_rate, has_arrays, item_duration, load_waveform, split_batch
from .configuration_resp_m2d import RespM2DConfig
from .feature_extraction_resp_m2d import RespM2DFeatureExtractor


@dataclass
class RespM2DModelOutput(ModelOutput):
    r"""
    Outputs of [`RespM2DModel`].

    last_hidden_state (`torch.FloatTensor` of shape `(batch, num_chunks, 1 + F * T_chunk, hidden)`):
        Token states after the final LayerNorm for every chunk (CLS first, patches in frequency-major order).
        Chunks that hold none of a clip's frames are zeros.
    pooler_output (`torch.FloatTensor` of shape `(batch, pooled_size)`):
        Clip embedding under `config.pooling` (frequency-wise by default: F x hidden).
    frame_embeddings (`torch.FloatTensor` of shape `(batch, time_steps, F * hidden)`):
        Per patch column, the F frequency-band embeddings concatenated lowest band first; chunks joined in time.
    frame_mask (`torch.BoolTensor` of shape `(batch, time_steps)`):
        True for the rows of `frame_embeddings` that belong to the clip; padded rows are zeros.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Token states after the embeddings and after every layer (before the final LayerNorm), each shaped like
        `last_hidden_state`.
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
    """Cuts a log-mel chunk into non-overlapping patches with a strided convolution."""

    def __init__(self, config):
        super().__init__()
        self.projection = nn.Conv2d(1, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, chunks):
        patches = self.projection(chunks[:, None].to(self.projection.weight.dtype))
        return patches.flatten(2).transpose(1, 2)


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
        patches = self.patch_embeddings(chunks)
        patches = patches + self.patch_positions(patches.shape[1] // self.config.num_frequency_patches)
        cls = (self.cls_token + self.position_embeddings[:, :1]).expand(patches.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, patches], dim=1))


class RespM2DAttention(nn.Module):
    """
    Multi-head self-attention with a fused query/key/value projection: SDPA, or the explicit softmax when attention
    probabilities are asked for or `attn_implementation="eager"`.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        """`attention_mask`: boolean (batch, 1, 1, tokens), True where a key may be attended to."""
        batch, tokens, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.dropout if self.training else 0.0
        probs = None
        if output_attentions or self.config._attn_implementation == "eager":
            scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
            context = torch.matmul(nn.functional.dropout(probs, dropout, self.training), value)
        else:
            context = nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=dropout
            )
        context = context.transpose(1, 2).reshape(batch, tokens, width)
        return self.proj(context), probs


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

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        attended, probs = self.attention(self.layernorm_before(hidden_states), attention_mask, output_attentions)
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states, probs


class RespM2DEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([RespM2DLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask=None, output_hidden_states=False, output_attentions=False):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, probs = layer(hidden_states, attention_mask, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        return hidden_states, all_hidden_states, all_attentions


class RespM2DPreTrainedModel(PreTrainedModel):
    config_class = RespM2DConfig
    config: RespM2DConfig
    base_model_prefix = "resp_m2d"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["RespM2DEmbeddings", "RespM2DLayer"]
    _supports_sdpa = True

    def __init__(self, config, *inputs, **kwargs):
        config.check_settings()
        super().__init__(config, *inputs, **kwargs)

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


class RespM2DModel(RespM2DPreTrainedModel):
    """
    The M2D ViT encoder. Log-mel input of any length is cut into consecutive chunks of `config.input_size[1]` frames;
    the last chunk is padded to whole patches and uses the first columns of the positional table. The full chunks of
    all clips run as one batch and the shorter last chunks as another, masked, so a clip's outputs do not depend on
    the rest of the batch.
    """

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = RespM2DEmbeddings(config)
        self.encoder = RespM2DEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    def valid_patches_per_chunk(self, num_frames, num_chunks):
        """
        Patch columns that each chunk of each clip contributes, as the original runtime counts them: the clip is
        padded to whole patches, cut every `unit_frames` frames, and each piece yields `floor(width / patch)` columns.
        (When the unit is not a multiple of the patch, e.g. 80x1001 with 16x16 patches, a last piece narrower than a
        patch makes the original crash; here it simply contributes no column.)
        """
        patch_frames = self.config.patch_size[1]
        padded = torch.div(num_frames + patch_frames - 1, patch_frames, rounding_mode="floor") * patch_frames
        starts = torch.arange(num_chunks, device=num_frames.device) * self.config.unit_frames
        widths = (padded[:, None] - starts[None, :]).clamp(0, self.config.unit_frames)
        return torch.div(widths, patch_frames, rounding_mode="floor")

    def split_into_chunks(self, input_features, attention_mask):
        """Returns the non-empty chunks (N, n_mels, frames), their (clip, chunk) index, patch counts and the grid."""
        batch, _, frames = input_features.shape
        if attention_mask is None:
            num_frames = torch.full((batch,), frames, device=input_features.device)
        else:
            num_frames = attention_mask.sum(-1).long()
            input_features = input_features * attention_mask[:, None, :].to(input_features.dtype)
        num_chunks = math.ceil(frames / self.config.unit_frames)
        valid = self.valid_patches_per_chunk(num_frames, num_chunks)
        clip_index, chunk_index = torch.nonzero(valid > 0, as_tuple=True)
        patches = valid[clip_index, chunk_index]
        width = int(patches.max()) * self.config.patch_size[1]
        padded = nn.functional.pad(input_features, (0, num_chunks * self.config.unit_frames - frames))
        chunks = padded.unflatten(-1, (num_chunks, self.config.unit_frames))[..., :width]
        chunks = chunks[clip_index, :, chunk_index]
        return chunks, (clip_index, chunk_index), patches, (batch, num_chunks)

    def encode_chunks(self, chunks, patches, output_hidden_states=False, output_attentions=False):
        """
        Encodes chunks (N, n_mels, frames) holding `patches` valid columns each. Full chunks and shorter last chunks
        run as separate batches, each only as wide as it needs (so equal-length clips need no padding or masking);
        results are padded back to a common width. Returns `(final states, hidden states, attentions)`.
        """
        time_patches = chunks.shape[-1] // self.config.patch_size[1]
        full = patches == time_patches
        if output_attentions or bool(full.all()) or not bool(full.any()):
            return self.encode_group(chunks, patches, output_hidden_states, output_attentions)
        hidden = chunks.new_zeros(
            len(chunks),
            1 + self.config.num_frequency_patches * time_patches,
            self.config.hidden_size,
            dtype=self.layernorm.weight.dtype,
        )
        layers = [hidden.clone() for _ in range(self.config.num_hidden_layers + 1)] if output_hidden_states else None
        for group in (full, ~full):
            width = int(patches[group].max())
            group_hidden, group_layers, _ = self.encode_group(
                chunks[group][..., : width * self.config.patch_size[1]], patches[group], output_hidden_states
            )
            hidden[group] = self.pad_columns(group_hidden, time_patches)
            for target, source in zip(layers or (), group_layers or ()):
                target[group] = self.pad_columns(source, time_patches)
        return hidden, tuple(layers) if layers else None, None

    def encode_group(self, chunks, patches, output_hidden_states=False, output_attentions=False):
        """One encoder batch: embeddings, masked blocks (when some chunks are shorter) and the final LayerNorm."""
        time_patches = chunks.shape[-1] // self.config.patch_size[1]
        hidden, all_hidden, all_attentions = self.encoder(
            self.embeddings(chunks), self.token_mask(patches, time_patches), output_hidden_states, output_attentions
        )
        return self.layernorm(hidden), all_hidden, all_attentions

    def pad_columns(self, tokens, time_patches):
        """Pads token states (n, 1 + F * w, D) with zero patch columns to (n, 1 + F * time_patches, D)."""
        patches = tokens[:, 1:].unflatten(1, (self.config.num_frequency_patches, -1))
        padded = nn.functional.pad(patches, (0, 0, 0, time_patches - patches.shape[2]))
        return torch.cat([tokens[:, :1], padded.flatten(1, 2)], dim=1)

    def token_mask(self, patches, time_patches):
        """Boolean key mask (N, 1, 1, 1 + F * time_patches) hiding padded patch columns; None if none is padded."""
        if bool((patches == time_patches).all()):
            return None
        columns = torch.arange(time_patches, device=patches.device)[None, :] < patches[:, None]
        cls = torch.ones_like(columns[:, :1])
        mask = torch.cat([cls, columns.repeat(1, self.config.num_frequency_patches)], dim=1)
        return mask[:, None, None, :]

    def forward(
        self,
        input_features,
        attention_mask=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
    ):
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, n_mels, frames)`):
            Normalized log-mel features from [`RespM2DFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch, frames)`, *optional*):
            1 for real frames, 0 for padding. Padded frames are zeroed and their patches masked out.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_input(input_features, attention_mask)

        chunks, index, patches, grid = self.split_into_chunks(input_features, attention_mask)
        time_patches = chunks.shape[-1] // self.config.patch_size[1]
        hidden, all_hidden, all_attentions = self.encode_chunks(
            chunks, patches, output_hidden_states, output_attentions
        )

        last_hidden_state = scatter_chunks(hidden, index, grid)
        frame_mask = self.frame_mask(patches, index, grid, time_patches)
        frame_embeddings = self.stack_frequency_bands(last_hidden_state, frame_mask)
        output = RespM2DModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=self.pool(last_hidden_state, frame_mask, frame_embeddings),
            frame_embeddings=frame_embeddings,
            frame_mask=frame_mask,
            hidden_states=tuple(scatter_chunks(h, index, grid) for h in all_hidden) if output_hidden_states else None,
            attentions=tuple(scatter_chunks(a, index, grid) for a in all_attentions) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

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
        if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("attention_mask must be right-padded: 1 for the leading real frames, then 0.")
        if attention_mask is None:
            num_frames = torch.full(input_features.shape[:1], input_features.shape[2])
        else:
            num_frames = attention_mask.sum(-1)
        empty = torch.nonzero(num_frames == 0).flatten().tolist()
        if empty:
            clips = f"Clip {empty[0]} has" if len(empty) == 1 else f"Clips {', '.join(map(str, empty))} have"
            raise ValueError(f"{clips} no frames (an empty input or an all-zero attention_mask row).")

    def frame_mask(self, patches, index, grid, time_patches):
        """(batch, time steps) mask of the patch columns that belong to each clip (a prefix of the joined chunks)."""
        steps = torch.zeros(grid[0], dtype=torch.long, device=patches.device).index_add_(0, index[0], patches)
        return torch.arange(int(steps.max()), device=patches.device)[None, :] < steps[:, None]

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

    @torch.no_grad()
    def embed(
        self,
        audio,
        sampling_rate=None,
        batch_size=8,
        feature_extractor=None,
        downmix=False,
        progress=None,
        autocast_dtype=None,
    ):
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
                `torch.bfloat16` (about twice as fast on recent CPUs and GPUs; embeddings within cosine 0.999 of fp32).

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
        feature_extractor.check_matches(self.config)
        items = split_batch(audio, downmix=downmix)
        names = ["audio"] if len(items) == 1 else [f"Input {index}" for index in range(len(items))]
        durations = [item_duration(item, sampling_rate, name) for item, name in zip(items, names)]
        rate_of_arrays_only = has_arrays(items)
        order = sorted(range(len(items)), key=durations.__getitem__)
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        show = len(batches) > 1 if progress is None else progress
        embeddings = [None] * len(items)
        was_training = self.training
        self.eval()  # no dropout, whatever mode the model is in
        try:
            for batch in progress_bar(batches, show, desc="Embedding"):
                rate = feature_extractor.sampling_rate
                waveforms = [
                    load_waveform(items[i], sampling_rate, rate, downmix, names[i], rate_of_arrays_only) for i in batch
                ]
                inputs = feature_extractor(
                    waveforms, sampling_rate=rate, return_attention_mask=True, device=self.device
                )
                del waveforms  # the audio is freed before the encoder runs
                for i, embedding in zip(batch, self.embed_features(inputs, autocast_dtype)):
                    embeddings[i] = embedding
        finally:
            self.train(was_training)
        return torch.stack(embeddings)

    def embed_features(self, inputs, autocast_dtype=None):
        """Clip embeddings (float32, on the CPU) of the feature extractor's outputs, in one forward pass."""
        with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return self(**inputs).pooler_output.float().cpu()


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
        if layer is None:
            return outputs.last_hidden_state
        if layer == "weighted":
            weights = self.layer_weights.softmax(0)
            return (torch.stack(outputs.hidden_states[1:], dim=-1) * weights).sum(-1)
        return outputs.hidden_states[layer]

    def forward(
        self,
        input_features,
        attention_mask=None,
        labels=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
    ):
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
                output_hidden_states=output_hidden_states or self.config.classifier_layer is not None,
                output_attentions=output_attentions,
                return_dict=True,
            )
        pooled = self.resp_m2d.pool(self.layer_states(outputs), outputs.frame_mask)
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
            output_hidden_states=self.config.classifier_layer is not None,
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

        # A step is one patch column; chunks of `unit_frames` frames hold `unit_frames // patch` columns each.
        patch_frames = self.config.patch_size[1]
        columns_per_chunk = self.config.unit_frames // patch_frames
        index = torch.arange(step_mask.shape[1], device=step_mask.device)
        chunk, column = index // columns_per_chunk, index % columns_per_chunk
        first_frame = chunk * self.config.unit_frames + column * patch_frames
        if attention_mask is None:
            num_frames = torch.full_like(step_mask[:, 0], input_features.shape[-1], dtype=torch.long)
        else:
            num_frames = attention_mask.sum(-1).long()
        last_frame = torch.minimum(first_frame[None, :] + patch_frames, num_frames[:, None])
        seconds_per_frame = self.config.hop_length / self.config.sampling_rate
        return {
            "logits": clip_logits,
            "step_logits": step_logits,
            "step_mask": step_mask,
            "step_start": first_frame[None, :] * seconds_per_frame * step_mask,
            "step_end": last_frame * seconds_per_frame * step_mask,
        }


def scatter_chunks(values, index, grid):
    """Puts per-chunk results (N, ...) back into a (batch, num_chunks, ...) tensor, zeros where a chunk is empty."""
    out = values.new_zeros(*grid, *values.shape[1:])
    out[index] = values
    return out


def progress_bar(iterable, show, desc):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)


__all__ = [
    "RespM2DForAudioClassification",
    "RespM2DModel",
    "RespM2DModelOutput",
    "RespM2DPreTrainedModel",
]
