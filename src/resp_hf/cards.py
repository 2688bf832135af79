"""Model cards rendered from the templates in `hub_cards/`."""

from pathlib import Path
from string import Template


def card_template(name):
    """Reads `hub_cards/<name>.md` from the installed package or, in a source checkout, the repository root."""
    package_dir = Path(__file__).resolve().parent
    for folder in (package_dir / "hub_cards", package_dir.parents[1] / "hub_cards"):
        path = folder / f"{name}.md"
        if path.is_file():
            return Template(path.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"Model card template {name}.md not found next to the package or in the source tree.")


def write_encoder_card(output_dir, config, source_name, sha256, repo_id=None):
    """Writes `README.md` describing a converted encoder."""
    output_dir = Path(output_dir)
    text = card_template("resp_m2d_encoder").substitute(
        model_name=repo_id or output_dir.name,
        repo_id=repo_id or str(output_dir),
        source_name=source_name,
        sha256=sha256,
        sampling_rate=config.sampling_rate,
        num_mel_bins=config.num_mel_bins,
        f_min=f"{config.f_min:g}",
        f_max=f"{config.f_max:g}",
        n_fft=config.n_fft,
        win_length=config.win_length,
        hop_length=config.hop_length,
        unit_frames=config.unit_frames,
        patch_f=config.patch_size[0],
        patch_t=config.patch_size[1],
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        norm_mean=f"{config.norm_mean:g}",
        norm_std=f"{config.norm_std:g}",
        pooled_size=config.pooled_size,
        pooling=config.pooling,
        frame_embedding_size=config.frame_embedding_size,
    )
    path = output_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
