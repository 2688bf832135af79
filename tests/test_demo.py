"""The web demo's request handler and the Space folder written by `resp-hf space` (the browser test drives the page)."""

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import OPERA, REPO_ROOT, noise, tiny_model
from huggingface_hub import metadata_load
from packaging.requirements import Requirement
from test_timeline import save_classifier
from transformers import pipeline

from resp_hf import RespM2DFeatureExtractor, demo
from resp_hf.cli import main
from resp_hf.demo import DEMO_REQUIREMENTS, analyze_upload, build_demo, describe_model, embedding_file
from resp_hf.visualize import load_model

RECORDING = OPERA / "datasets" / "icbhi" / "ICBHI_final_database" / "104_1b1_Al_sc_Litt3200.wav"  # 4 kHz


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_classifier")
    save_classifier(folder)
    return folder


def test_a_recording_gives_labels_figure_and_embedding(classifier_folder, tmp_path):
    model = load_model(classifier_folder)
    status, labels, figure, embedding_path = analyze_upload(model, str(RECORDING), False, tmp_path)
    assert status.startswith(f"**{RECORDING.name}**") and "16000 Hz" in status
    classify = pipeline("audio-classification", model=str(classifier_folder), trust_remote_code=True)
    expected = {entry["label"]: entry["score"] for entry in classify(str(RECORDING))}
    assert labels == pytest.approx(expected, abs=1e-5)
    assert figure.axes[1].get_xlabel() == "time (s)"
    assert embedding_path.endswith("104_1b1_Al_sc_Litt3200_embedding.npy")
    rate, audio = 4000, soundfile.read(RECORDING, dtype="float32")[0]
    expected_embedding = model.resp_m2d.embed({"array": audio, "sampling_rate": rate})[0].numpy()
    np.testing.assert_allclose(np.load(embedding_path, allow_pickle=False), expected_embedding, atol=1e-5)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("stereo", "stereo.wav has 2 channels, but the model takes mono audio: tick 'Average the channels"),
        ("empty", "empty.wav is empty"),
        ("corrupt", "Could not read corrupt.wav"),
    ],
)
def test_bad_files_give_one_line_messages_and_no_results(classifier_folder, tmp_path, kind, message):
    path = tmp_path / f"{kind}.wav"
    if kind == "stereo":
        soundfile.write(path, np.stack([noise(1.0), noise(1.0, seed=1)], axis=1), 16000)
    elif kind == "empty":
        soundfile.write(path, np.zeros((0, 1), np.float32), 16000)
    else:
        path.write_bytes(b"RIFF\x00\x01 this is not audio" * 50)
    status, *results = analyze_upload(load_model(classifier_folder), str(path), False, tmp_path)
    assert status.startswith("**Could not analyze this file.**") and message in status
    assert "\n" not in status and "Traceback" not in status
    assert results == [None, None, None]


def test_stereo_is_averaged_when_asked(classifier_folder, tmp_path):
    left, right = noise(1.0), noise(1.0, seed=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000)
    model = load_model(classifier_folder)
    _, labels, _, embedding_path = analyze_upload(model, str(path), True, tmp_path)
    mean = soundfile.read(path, dtype="float32")[0].mean(1)
    expected = model.resp_m2d.embed(mean, sampling_rate=16000)[0].numpy()
    np.testing.assert_allclose(np.load(embedding_path), expected, atol=1e-5)
    assert labels is not None


@pytest.mark.parametrize("suffix", ["flac", "ogg", "mp3"])
def test_compressed_formats_at_other_rates_are_analyzed(classifier_folder, tmp_path, suffix):
    path = tmp_path / f"clip.{suffix}"
    soundfile.write(path, noise(1.5, rate=22050), 22050)
    decoded, rate = soundfile.read(path, dtype="float32")
    model = load_model(classifier_folder)
    status, labels, _, embedding_path = analyze_upload(model, str(path), False, tmp_path)
    assert status == f"**clip.{suffix}**: {len(decoded) / rate:.1f} s, analyzed at 16000 Hz."
    expected = model.resp_m2d.embed({"array": decoded, "sampling_rate": rate})[0].numpy()
    np.testing.assert_allclose(np.load(embedding_path), expected, atol=1e-5)
    assert set(labels) == set(model.config.id2label.values())


def test_only_the_latest_embedding_files_stay_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "KEPT_EMBEDDING_FILES", 3)
    paths = [embedding_file(np.full(4, index, np.float32), f"clip{index}.wav", tmp_path) for index in range(6)]
    kept = sorted(tmp_path.rglob("*.npy"))
    assert len(kept) == 3 and len(list(tmp_path.iterdir())) == 3
    assert Path(paths[-1]) in kept and np.load(paths[-1]).tolist() == [5.0] * 4


def test_the_page_removes_gradios_copies_of_uploads_and_results(classifier_folder):
    frequency, age = build_demo(classifier_folder).delete_cache
    assert 0 < frequency <= age


def test_an_encoder_folder_gives_the_embedding_view(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "encoder")
    RespM2DFeatureExtractor.from_model_config(model.config).save_pretrained(tmp_path / "encoder")
    encoder = load_model(tmp_path / "encoder")
    assert "no classifier head" in describe_model(encoder, "encoder")
    status, labels, figure, embedding_path = analyze_upload(encoder, str(RECORDING), False, tmp_path)
    assert labels is None and "16000 Hz" in status
    assert [text.get_text() for text in figure.axes[1].get_legend().get_texts()] == ["PC1", "PC2", "PC3"]
    np.testing.assert_allclose(np.load(embedding_path), encoder.embed(str(RECORDING))[0].numpy(), atol=1e-5)


def test_nothing_uploaded_asks_for_a_recording(classifier_folder, tmp_path):
    status, *results = analyze_upload(load_model(classifier_folder), None, False, tmp_path)
    assert "Upload or record" in status and results == [None, None, None]


def test_space_folder_is_complete_and_its_app_builds_offline(classifier_folder, tmp_path, capsys):
    space = tmp_path / "space"
    assert main(["space", "my-org/resp-m2d-icbhi", str(space), "--title", "ICBHI: lung sounds"]) == 0
    assert f"Wrote {space}" in capsys.readouterr().out
    card = metadata_load(space / "README.md")
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and card["title"] == "ICBHI: lung sounds"
    assert card["models"] == ["my-org/resp-m2d-icbhi"] and card["python_version"] == "3.11"
    import gradio

    assert card["sdk_version"] == gradio.__version__
    requirements = (space / "requirements.txt").read_text().split()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    expected = pyproject["dependencies"] + pyproject["optional-dependencies"]["demo"]
    assert by_name(requirements) == by_name(expected)  # resp_hf's own requirements and the demo extra
    assert DEMO_REQUIREMENTS == pyproject["optional-dependencies"]["demo"]
    assert "os.environ.get(\"RESP_HF_DEMO_MODEL\", 'my-org/resp-m2d-icbhi')" in (space / "app.py").read_text()
    # The app imports the package copied beside it and builds the page, offline, on a local model folder.
    code = (
        "import json, runpy, sys\n"
        "app = runpy.run_path('app.py')\n"
        "import resp_hf\n"
        "print(json.dumps({'package': resp_hf.__file__, 'app': type(app['demo']).__name__}))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(RESP_HF_DEMO_MODEL=str(classifier_folder), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=space, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["app"] == "Blocks" and report["package"] == str(space / "resp_hf" / "__init__.py")


def by_name(requirements):
    parsed = [Requirement(requirement) for requirement in requirements]
    return {requirement.name: requirement.specifier for requirement in parsed}


def test_space_refuses_bad_ids_and_non_empty_folders(tmp_path, capsys):
    assert main(["space", "not a repo id", str(tmp_path / "a")]) == 2
    assert "model_id must be a Hub repo id" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    assert main(["space", "my-org/model", str(tmp_path / "b")]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "b" / "keep.txt").read_text() == "mine"


def test_missing_demo_extra_is_one_line_with_the_install_command(classifier_folder, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "gradio" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["demo", str(classifier_folder)]) == 2
    error = capsys.readouterr().err
    assert error == "resp-hf demo: error: this command needs the 'demo' extra (No module named 'gradio'): " + (
        'pip install "resp-hf[demo]"\n'
    )
