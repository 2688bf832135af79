"""What the model hears: a recording's log-mel spectrogram with the time-resolved scores (or embeddings) under it."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .models.resp_m2d import RespM2DConfig, RespM2DFeatureExtractor, RespM2DForAudioClassification, RespM2DModel
from .models.resp_m2d.audio_utils_resp_m2d import load_waveform
from .models.resp_m2d.feature_extraction_resp_m2d import hz_to_mel_slaney
from .models.resp_m2d.pipeline_resp_m2d import RespM2DAudioClassificationPipeline
from .output_folders import atomic_file

MAX_CURVES = 6  # labels drawn under the spectrogram: more curves than this are unreadable
NUM_COMPONENTS = 3


@dataclass
class Analysis:
    """
    One recording as the model sees it.

    `log_mel` is (n_mels, frames) in dB; `step_start` / `step_end` are each step's span in seconds. A classifier fills
    `clip_scores` (label -> score, best first) and `step_scores` (label -> one score per step); an encoder fills
    `components`, the first principal components of its per-step embeddings (steps, k). `embedding` is the clip
    embedding (`pooler_output` of the encoder).
    """

    duration: float
    log_mel: np.ndarray
    seconds_per_frame: float
    mel_edges_hz: tuple[float, float]
    step_start: np.ndarray
    step_end: np.ndarray
    embedding: np.ndarray
    clip_scores: dict[str, float] | None = None
    step_scores: dict[str, np.ndarray] | None = None
    components: np.ndarray | None = None


def load_model(name_or_path: str | Path):
    """A resp_hf folder or Hub id: the classifier if its config names one, else the encoder; in evaluation mode."""
    config = RespM2DConfig.from_pretrained(name_or_path)
    is_classifier = "RespM2DForAudioClassification" in (config.architectures or [])
    model_class = RespM2DForAudioClassification if is_classifier else RespM2DModel
    return model_class.from_pretrained(name_or_path).eval()


def encoder_of(model):
    return model.resp_m2d if isinstance(model, RespM2DForAudioClassification) else model


@torch.no_grad()
def analyze(model, audio, sampling_rate: int | None = None, downmix: bool = False) -> Analysis:
    """
    Analyses one recording (a path, bytes, a `{"array", "sampling_rate"}` dict, or an array at `sampling_rate`).
    A classifier's step scores are its clip head applied to each step (see `frame_logits`), not event detections.
    """
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    waveform = load_waveform(audio, sampling_rate, extractor.sampling_rate, downmix=downmix)
    inputs = extractor(waveform, sampling_rate=extractor.sampling_rate, return_attention_mask=True)
    log_mel = inputs["input_features"][0] * extractor.std + extractor.mean  # natural log of mel power
    encoder = encoder_of(model)
    outputs = encoder(**inputs)
    analysis = Analysis(
        duration=len(waveform) / extractor.sampling_rate,
        log_mel=(log_mel * (10 / np.log(10))).numpy(),
        seconds_per_frame=extractor.hop_length / extractor.sampling_rate,
        mel_edges_hz=(extractor.f_min, extractor.f_max),
        step_start=np.zeros(0),
        step_end=np.zeros(0),
        embedding=outputs.pooler_output[0].float().numpy(),
    )
    if isinstance(model, RespM2DForAudioClassification):
        add_label_scores(analysis, model, extractor, waveform)
    else:
        add_components(analysis, encoder, outputs, int(inputs["attention_mask"].sum()))
    return analysis


def add_label_scores(analysis, model, extractor, waveform):
    """Clip and per-step scores from the pipeline, so that softmax / sigmoid follow the model's problem type."""
    classify = RespM2DAudioClassificationPipeline(model=model, feature_extractor=extractor)
    result = classify({"array": waveform, "sampling_rate": extractor.sampling_rate}, return_timeline=True)
    analysis.clip_scores = {entry["label"]: entry["score"] for entry in result}
    analysis.step_scores = {entry["label"]: np.asarray(entry["timeline"]["score"]) for entry in result}
    analysis.step_start = np.asarray(result[0]["timeline"]["start"])
    analysis.step_end = np.asarray(result[0]["timeline"]["end"])


def add_components(analysis, encoder, outputs, num_frames):
    """
    The first principal components of the per-step embeddings, each scaled to unit standard deviation. The axes are
    fitted on the steps that cover a whole patch: a last, mostly padded step is shown but would dominate the fit.
    """
    frames = outputs.frame_embeddings[0][outputs.frame_mask[0]].double().numpy()
    first, last = (frame[0].numpy() for frame in encoder.step_frames(torch.tensor([num_frames]), len(frames)))
    analysis.step_start = first * analysis.seconds_per_frame
    analysis.step_end = last * analysis.seconds_per_frame
    is_whole = last - first == encoder.config.patch_size[1]
    fitted = frames[is_whole] if is_whole.sum() >= 2 else frames
    mean = fitted.mean(0)
    _, _, basis = np.linalg.svd(fitted - mean, full_matrices=False)
    basis = basis[:NUM_COMPONENTS]
    scale = np.maximum(((fitted - mean) @ basis.T).std(0), 1e-12)
    analysis.components = (frames - mean) @ basis.T / scale


def title_of(analysis, name=None, top_k=3):
    """The clip-level result in one line: the best labels and their scores, or the embedding size."""
    prefix = f"{name}: " if name else ""
    if analysis.clip_scores is None:
        return f"{prefix}encoder only, clip embedding of {analysis.embedding.size} values ({analysis.duration:.1f} s)"
    best = ", ".join(f"{label} {score:.2f}" for label, score in list(analysis.clip_scores.items())[:top_k])
    return f"{prefix}clip: {best} ({analysis.duration:.1f} s)"


def plot_analysis(analysis: Analysis, name: str | None = None):
    """A figure: the spectrogram above, the per-step scores (or principal components) below, on one time axis."""
    from matplotlib.figure import Figure  # not pyplot: no display, and no global figure list to leak into

    figure = Figure(figsize=(11, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    draw_spectrogram(top, analysis, figure)
    if analysis.step_scores is not None:
        draw_scores(bottom, analysis)
    else:
        draw_components(bottom, analysis)
    bottom.set_xlabel("time (s)")
    bottom.set_xlim(0, analysis.duration)
    figure.suptitle(title_of(analysis, name), fontsize=12)
    return figure


def draw_spectrogram(axis, analysis, figure):
    n_mels, frames = analysis.log_mel.shape
    low, high = np.percentile(analysis.log_mel, [5, 99.5])  # robust colour range: silence does not wash it out
    image = axis.imshow(
        analysis.log_mel,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=low,
        vmax=high,
        extent=(0, frames * analysis.seconds_per_frame, 0, n_mels),
        interpolation="nearest",
    )
    # Mel bands are evenly spaced on the Slaney mel scale between f_min and f_max: place Hz ticks on it.
    f_min, f_max = analysis.mel_edges_hz
    mel_low, mel_high = hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max)
    ticks_hz = [hz for hz in (100, 250, 500, 1000, 2000, 4000, 8000, 16000) if f_min < hz < f_max]
    positions = [float((hz_to_mel_slaney(hz) - mel_low) / (mel_high - mel_low) * n_mels) for hz in ticks_hz]
    axis.set_yticks(positions, [f"{hz:g}" if hz < 1000 else f"{hz / 1000:g}k" for hz in ticks_hz])
    axis.set_ylabel("frequency (Hz, mel scale)")
    figure.colorbar(image, ax=axis, label="log-mel power (dB)", pad=0.01)


def draw_scores(axis, analysis):
    """One stair curve per label (the best `MAX_CURVES` by clip score), each step drawn over its own time span."""
    edges = np.append(analysis.step_start, analysis.step_end[-1])
    for label in list(analysis.clip_scores)[:MAX_CURVES]:
        axis.stairs(analysis.step_scores[label], edges, label=label, linewidth=2)
    axis.set_ylabel("score per step")
    if all_probabilities(analysis):  # softmax / sigmoid: a fixed 0-1 axis, so that recordings compare
        axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, title="clip head per step")


def all_probabilities(analysis):
    return all(0 <= score <= 1 for scores in analysis.step_scores.values() for score in scores)


def draw_components(axis, analysis):
    edges = np.append(analysis.step_start, analysis.step_end[-1])
    for k in range(analysis.components.shape[1]):
        axis.stairs(analysis.components[:, k], edges, label=f"PC{k + 1}", linewidth=2)
    axis.set_ylabel("embedding per step\n(principal components, z)")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)


def plot_file(
    model: str | Path, audio: str | Path, output: str | Path, downmix: bool = False, overwrite: bool = False
) -> Path:
    """
    Writes the figure of one recording (`resp-hf plot`) as `output` (its extension picks the format: .png, .pdf,
    .svg, ...); an existing file is replaced only with `overwrite`. Returns the output path.
    """
    output = check_figure_path(output, overwrite)
    rate = RespM2DConfig.from_pretrained(model).sampling_rate
    waveform = load_waveform(str(audio), None, rate, downmix=downmix)  # a bad file fails before the model loads
    analysis = analyze(load_model(model), waveform, sampling_rate=rate)
    figure = plot_analysis(analysis, name=Path(audio).name)
    with atomic_file(output) as temporary:
        figure.savefig(temporary, dpi=120, format=output.suffix[1:].lower())
    return output


def check_figure_path(output: str | Path, overwrite: bool) -> Path:
    """`output` as a Path if it names an image file matplotlib writes and, unless `overwrite`, no file is there yet."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    path = Path(output)
    if path.suffix[1:].lower() not in formats:
        raise ValueError(
            f"The figure path {str(output)!r} needs an image extension, one of: {', '.join(sorted(formats))}."
        )
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass overwrite=True to replace it, or choose another path.")
    return path


__all__ = ["Analysis", "analyze", "load_model", "plot_analysis", "plot_file"]
