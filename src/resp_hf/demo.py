"""A Gradio web demo of a resp_hf model (`resp-hf demo`), and the Hugging Face Space folder that hosts one."""

import functools
import importlib.metadata
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from .models.resp_m2d import RespM2DForAudioClassification
from .models.resp_m2d.audio_utils_resp_m2d import load_audio
from .output_folders import check_output_folder
from .visualize import analyze, encoder_of, load_model, plot_analysis

logger = logging.getLogger(__name__)

# What the Space installs on top of resp_hf's core requirements; pyproject's `demo` extra lists the same.
DEMO_REQUIREMENTS = ["gradio>=6.0,<7", "matplotlib>=3.7"]
TOP_K = 5
DOWNMIX_LABEL = "Average the channels of stereo recordings"
# Embedding files of the latest requests kept on disk (Gradio serves its own copies); older ones are removed.
KEPT_EMBEDDING_FILES = 32
# Gradio's copies of uploads and outputs: checked every hour, removed after a day.
GRADIO_CACHE_LIFETIME = (3600, 86400)


def describe_model(model, name):
    """The page's introduction: what the model is and what the score curves mean."""
    config = encoder_of(model).config
    step_ms = 1000 * config.patch_size[1] * config.hop_length / config.sampling_rate
    if isinstance(model, RespM2DForAudioClassification):
        labels = ", ".join(model.config.id2label[i] for i in range(model.config.num_labels))
        curves = (
            f"The curves under the spectrogram are the clip classifier applied to each {step_ms:g} ms step on its "
            "own (not a trained event detector): they show where in the recording the model hears each label."
        )
        return f"# {name}\nRespiratory sound classifier ({labels}). {curves}"
    return (
        f"# {name}\nRespiratory audio encoder (no classifier head). The curves under the spectrogram are the first "
        f"principal components of its {step_ms:g} ms step embeddings; download the clip embedding below."
    )


def read_upload(path, sampling_rate, downmix):
    """The uploaded or recorded file as mono audio at the model's rate; errors name the file as the user knows it."""
    name = Path(path).name  # Gradio keeps the uploaded file name in its temporary copy
    try:
        channels = soundfile.info(path).channels
    except (soundfile.LibsndfileError, RuntimeError):
        channels = 1  # unreadable: load_audio reports it
    if channels > 1 and not downmix:
        raise ValueError(
            f"{name} has {channels} channels, but the model takes mono audio: tick '{DOWNMIX_LABEL}' and submit again."
        )
    return load_audio(path, sampling_rate, downmix=downmix, name=name)


def embedding_file(embedding, path, folder):
    """
    Saves the clip embedding as `<recording>_embedding.npy` in a fresh folder of `folder` (one per request); the
    folders of all but the latest `KEPT_EMBEDDING_FILES` requests are removed, so a long-running demo does not fill
    its disk.
    """
    remove_oldest_folders(Path(folder), keep=KEPT_EMBEDDING_FILES - 1)
    output = Path(tempfile.mkdtemp(dir=folder)) / f"{Path(path).stem}_embedding.npy"
    np.save(output, embedding.astype(np.float32))
    return str(output)


def remove_oldest_folders(folder, keep):
    """Removes the subfolders of `folder` but the `keep` most recently created ones."""
    subfolders = sorted(
        (entry for entry in folder.iterdir() if entry.is_dir()), key=lambda entry: entry.stat().st_ctime_ns
    )
    for old in subfolders[: max(len(subfolders) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def analyze_upload(model, path, downmix, outputs_dir):
    """
    One request of the page: (status, label scores, figure, embedding file). A bad file gives a one-line message and
    empty results, never a traceback.
    """
    if path is None:
        return "Upload or record a respiratory sound, then press Analyze.", None, None, None
    rate = encoder_of(model).config.sampling_rate
    try:
        waveform = read_upload(path, rate, downmix)
        analysis = analyze(model, waveform, sampling_rate=rate)
    except (ValueError, OSError) as error:  # bad input: say what is wrong with the file
        return f"**Could not analyze this file.** {error}", None, None, None
    except Exception:  # the page shows one line; the server log keeps the traceback
        logger.exception("Analysis of %s failed", path)
        return f"**Analysis failed** for {Path(path).name}: an internal error (see the server log).", None, None, None
    status = f"**{Path(path).name}**: {analysis.duration:.1f} s, analyzed at {rate} Hz."
    figure = plot_analysis(analysis, name=Path(path).name)
    return status, analysis.clip_scores, figure, embedding_file(analysis.embedding, path, outputs_dir)


def build_demo(model_name_or_path: str | Path, title: str | None = None):
    """The Gradio app for a resp_hf folder or Hub id; the model is loaded once, before the page is served."""
    import gradio as gr

    model = load_model(model_name_or_path)
    name = title or str(model_name_or_path).rstrip("/").split("/")[-1]
    run = functools.partial(analyze_upload, model, outputs_dir=tempfile.mkdtemp(prefix="resp_hf_demo_"))

    with gr.Blocks(title=f"{name} (resp_hf)", delete_cache=GRADIO_CACHE_LIFETIME) as demo:
        gr.Markdown(describe_model(model, name))
        with gr.Row():
            with gr.Column(scale=1):
                audio = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Recording (WAV, FLAC, MP3, OGG, any rate)"
                )
                downmix = gr.Checkbox(label=DOWNMIX_LABEL, value=False)
                button = gr.Button("Analyze", variant="primary", elem_id="analyze")
                status = gr.Markdown(elem_id="status")
                is_classifier = isinstance(model, RespM2DForAudioClassification)
                labels = gr.Label(num_top_classes=TOP_K, label="Clip labels", elem_id="labels", visible=is_classifier)
                embedding = gr.File(label="Clip embedding (.npy)", elem_id="embedding")
            with gr.Column(scale=2):
                figure = gr.Plot(show_label=False, elem_id="figure", format="png")  # the figure has its own title
        triggers = [button.click, audio.upload, audio.stop_recording]
        gr.on(triggers, run, inputs=[audio, downmix], outputs=[status, labels, figure, embedding])
    return demo


def launch_demo(model_name_or_path: str | Path, host: str = "127.0.0.1", port: int = 7860, title: str | None = None):
    """Serves the demo until interrupted (`resp-hf demo`)."""
    build_demo(model_name_or_path, title=title).launch(server_name=host, server_port=port, show_error=False)


SPACE_APP = '''"""Gradio Space for {model_id}, written by `resp-hf space`: upload or record a respiratory sound."""

import os

from resp_hf.demo import build_demo

# RESP_HF_DEMO_MODEL runs the same app on another model, e.g. a local folder to try the Space before pushing it.
demo = build_demo(os.environ.get("RESP_HF_DEMO_MODEL", {model_id!r}), title={title!r})

if __name__ == "__main__":
    demo.launch()
'''

SPACE_CARD = """---
title: {title_yaml}
emoji: 🫁
colorFrom: indigo
colorTo: red
sdk: gradio
sdk_version: {gradio_version}
python_version: "3.11"
app_file: app.py
pinned: false
models:
- {model_id}
tags:
- audio
- respiratory-sounds
- m2d
---

# {title}

A demo of [{model_id}](https://huggingface.co/{model_id}): upload or record a respiratory sound to see its log-mel
spectrogram, the model's scores over time, the clip-level labels, and to download the clip embedding.

The scores over time are the clip classifier applied to each time step on its own; they show where the model hears a
label, but the model was not trained to detect events. Not a medical device.

Written by `resp-hf space`; the `resp_hf` folder is the resp_hf package the demo runs on.
"""


def core_requirements():
    """resp_hf's own requirements (no extras), as installed."""
    requirements = importlib.metadata.requires("resp-hf") or []
    return [requirement for requirement in requirements if "extra ==" not in requirement]


def write_space(model_id: str, output_dir: str | Path, title: str | None = None) -> Path:
    """
    Writes a Hugging Face Space folder for the model `model_id`: `app.py`, `requirements.txt`, `README.md` (with the
    Space front matter) and a copy of the `resp_hf` package, so that the Space needs nothing unpublished.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model_id):
        raise ValueError(f"model_id must be a Hub repo id like 'my-org/resp-m2d-icbhi', got {model_id!r}.")
    output_dir = Path(output_dir)
    check_output_folder(output_dir, option=None)
    output_dir.mkdir(parents=True, exist_ok=True)
    title = title or model_id.split("/")[-1]
    gradio_version = importlib.metadata.version("gradio")
    (output_dir / "app.py").write_text(SPACE_APP.format(model_id=model_id, title=title), encoding="utf-8")
    requirements = core_requirements() + DEMO_REQUIREMENTS
    (output_dir / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    card = SPACE_CARD.format(
        title=title, title_yaml=json.dumps(title), model_id=model_id, gradio_version=gradio_version
    )
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    package = Path(__file__).resolve().parent
    shutil.copytree(package, output_dir / "resp_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return output_dir


__all__ = ["build_demo", "launch_demo", "write_space"]
