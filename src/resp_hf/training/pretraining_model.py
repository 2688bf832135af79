"""The M2D pre-training objective: an online encoder and predictor learn the EMA target encoder's masked patches."""

import copy

import numpy as np
import torch
from torch import nn

from ..models.resp_m2d import RespM2DConfig, RespM2DModel
from ..models.resp_m2d.modeling_resp_m2d import RespM2DLayer


def sincos_positions(width, grid_frequency, grid_time):
    """
    M2D's fixed 2-D sine-cosine table (1, 1 + F * T, width), CLS row zero, patches F-major: the first half of the
    channels encodes the time position, the second half the frequency position (MAE's `get_2d_sincos_pos_embed`).
    """
    if width % 4:
        raise ValueError(f"The positional width {width} must be a multiple of 4.")
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    frequency, time = np.meshgrid(np.arange(grid_frequency), np.arange(grid_time), indexing="ij")

    def encode(positions):
        angles = positions.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(time), encode(frequency)], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros((1, width)), table])).float()[None]


def visible_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of `num_patches` stay visible at `mask_ratio` (M2D's rule); an error unless some but not all are."""
    keep = int(num_patches * (1 - mask_ratio))
    if not 0 < keep < num_patches:
        raise ValueError(f"mask_ratio={mask_ratio} leaves {keep} of {num_patches} patches visible.")
    return keep


def random_masks(batch, num_patches, mask_ratio, generator=None, device=None):
    """Per-sample random split of patch indices into sorted visible and masked sets, `(B, keep)` and `(B, N - keep)`."""
    keep = visible_patches(num_patches, mask_ratio)
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1).to(device)
    return order[:, :keep].sort(dim=1).values, order[:, keep:].sort(dim=1).values


def m2d_loss(predictions, targets, eps=1e-6):
    """
    M2D's loss with its default `norm_pix_loss`: each target vector standardized over its channels (unbiased
    variance), then the mean over masked patches of `2 - 2 * cos(prediction, target)`.
    """
    targets = (targets - targets.mean(dim=-1, keepdim=True)) / (targets.var(dim=-1, keepdim=True) + eps) ** 0.5
    cosine = (nn.functional.normalize(predictions, dim=-1) * nn.functional.normalize(targets, dim=-1)).sum(dim=-1)
    return (2 - 2 * cosine).mean()


def gather_tokens(tokens, indices):
    """Rows `indices` (B, K) of `tokens` (B, N, D)."""
    return tokens.gather(1, indices[..., None].expand(-1, -1, tokens.shape[-1]))


def predictor_config(width: int = 512, depth: int = 8, heads: int = 16, layer_norm_eps: float = 1e-6) -> RespM2DConfig:
    """The predictor's ViT settings (M2D: 512 wide, 8 blocks, 16 heads, MLP 4x)."""
    return RespM2DConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        layer_norm_eps=layer_norm_eps,
    )


def predictor_config_from_weights(weights: dict[str, torch.Tensor], source: object) -> RespM2DConfig:
    """Predictor width and depth from its weights (heads = width / 32, as M2D's 512-d, 16-head predictor)."""
    width = weights["predictor.embed.weight"].shape[0]
    blocks = {key.split(".")[2] for key in weights if key.startswith("predictor.layers.")}
    if not blocks:
        raise ValueError(f"{source} holds a predictor without blocks: the checkpoint is incomplete.")
    if blocks != {str(index) for index in range(len(blocks))}:
        raise ValueError(
            f"{source} holds predictor blocks {sorted(blocks, key=lambda block: (len(block), block))}, not 0 to "
            f"{len(blocks) - 1}: the checkpoint is incomplete or damaged."
        )
    try:
        return predictor_config(width=width, depth=len(blocks), heads=max(1, width // 32))
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


class M2DPredictor(nn.Module):
    """Narrow ViT that predicts the target embedding of every masked patch from the online encoder's visible output."""

    def __init__(self, encoder_config, config):
        super().__init__()
        self.config = config
        num_tokens = 1 + encoder_config.num_frequency_patches * encoder_config.time_patches_per_chunk
        self.embed = nn.Linear(encoder_config.hidden_size, config.hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        positions = sincos_positions(
            config.hidden_size, encoder_config.num_frequency_patches, encoder_config.time_patches_per_chunk
        )
        self.position_embeddings = nn.Parameter(positions[:, :num_tokens], requires_grad=False)
        self.layers = nn.ModuleList([RespM2DLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, encoder_config.hidden_size)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible_output, visible, masked):
        """Online output (B, 1 + keep, D) -> predictions (B, N - keep, D), one per masked patch in `masked` order."""
        tokens = self.embed(visible_output)
        batch, num_patches = visible.shape[0], visible.shape[1] + masked.shape[1]
        full = self.mask_token.to(tokens.dtype).expand(batch, num_patches, -1).clone()
        full.scatter_(1, visible[..., None].expand(-1, -1, full.shape[-1]), tokens[:, 1:])
        hidden = torch.cat([tokens[:, :1], full], dim=1) + self.position_embeddings
        for layer in self.layers:
            hidden, _ = layer(hidden)
        return self.head(gather_tokens(self.norm(hidden)[:, 1:], masked))


class M2DPretrainingModel(nn.Module):
    """
    M2D: the online encoder (a `RespM2DModel`) sees the visible patches; the target encoder (an exponential moving
    average of the online blocks and final norm, sharing the patch and positional embeddings) sees only the masked
    patches; the predictor maps the online output to the target's masked-patch embeddings. Loss: `m2d_loss`. As in
    M2D, the encoder's positional table is a fixed sine-cosine table (checkpoints load their own over it).
    """

    def __init__(self, encoder_config, predictor=None):
        super().__init__()
        self.online = RespM2DModel(encoder_config)
        positions = self.online.embeddings.position_embeddings
        with torch.no_grad():
            positions.copy_(
                sincos_positions(
                    encoder_config.hidden_size,
                    encoder_config.num_frequency_patches,
                    encoder_config.time_patches_per_chunk,
                )
            )
        positions.requires_grad_(False)
        self.target_layers = copy.deepcopy(self.online.encoder.layer).requires_grad_(False)
        self.target_norm = copy.deepcopy(self.online.layernorm).requires_grad_(False)
        self.predictor = M2DPredictor(encoder_config, predictor or predictor_config())

    @property
    def config(self):
        return self.online.config

    def patch_tokens(self, chunks):
        """Patch embeddings plus positions (no CLS) of unit-size chunks (B, n_mels, frames)."""
        embeddings = self.online.embeddings
        patches = embeddings.patch_embeddings(chunks)
        return patches + embeddings.patch_positions(patches.shape[1] // self.config.num_frequency_patches)

    def with_cls(self, tokens):
        embeddings = self.online.embeddings
        cls = (embeddings.cls_token + embeddings.position_embeddings[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def encode_online(self, tokens, visible):
        hidden = self.with_cls(gather_tokens(tokens, visible))
        for layer in self.online.encoder.layer:
            hidden, _ = layer(hidden)
        return self.online.layernorm(hidden)

    @torch.no_grad()
    def encode_target(self, tokens, masked):
        hidden = self.with_cls(gather_tokens(tokens, masked))
        for layer in self.target_layers:
            hidden, _ = layer(hidden)
        return self.target_norm(hidden)[:, 1:]

    def forward(self, chunks, mask_ratio=0.7, generator=None):
        """Returns `(loss, predictions, targets, visible, masked)` for a batch of normalized log-mel chunks."""
        tokens = self.patch_tokens(chunks)
        visible, masked = random_masks(tokens.shape[0], tokens.shape[1], mask_ratio, generator, tokens.device)
        predictions = self.predictor(self.encode_online(tokens, visible), visible, masked)
        targets = self.encode_target(tokens.detach(), masked)
        return m2d_loss(predictions.float(), targets.float()), predictions, targets, visible, masked

    @torch.no_grad()
    def update_target(self, decay):
        """target = decay * target + (1 - decay) * online, for the blocks and the final norm."""
        online = [*self.online.encoder.layer.parameters(), *self.online.layernorm.parameters()]
        target = [*self.target_layers.parameters(), *self.target_norm.parameters()]
        torch._foreach_mul_(target, decay)
        torch._foreach_add_(target, online, alpha=1 - decay)
