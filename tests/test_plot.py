"""`resp-hf plot` and the analysis behind it."""

import numpy as np
import pytest
import soundfile
import torch
from conftest import OPERA, noise
from matplotlib import image as mpimg
from test_timeline import features, save_classifier
from transformers import pipeline

from resp_hf.cli import main
from resp_hf.visualize import analyze, load_model, plot_analysis

RECORDING = OPERA / "datasets" / "icbhi" / "ICBHI_final_database" / "101_1b1_Al_sc_Meditron.wav"  # 20 s at 44.1 kHz


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plot_classifier")
    save_classifier(folder)
    return folder


def test_classifier_analysis_matches_the_pipeline_and_the_encoder(classifier_folder):
    model = load_model(classifier_folder)
    analysis = analyze(model, str(RECORDING))
    classify = pipeline("audio-classification", model=str(classifier_folder), trust_remote_code=True)
    expected = classify(str(RECORDING), return_timeline=True)
    assert list(analysis.clip_scores) == [entry["label"] for entry in expected]  # best first
    for entry in expected:
        assert analysis.clip_scores[entry["label"]] == pytest.approx(entry["score"], abs=1e-5)
        np.testing.assert_allclose(analysis.step_scores[entry["label"]], entry["timeline"]["score"], atol=1e-5)
    assert analysis.duration == pytest.approx(20.0, abs=0.01)
    assert analysis.step_start[0] == 0 and analysis.step_end[-1] == pytest.approx(analysis.duration, abs=0.011)
    np.testing.assert_allclose(np.diff(analysis.step_start), 0.16, atol=1e-5)
    assert analysis.log_mel.shape == (80, 2001)
    waveform = soundfile.read(RECORDING, dtype="float32")
    embedding = model.resp_m2d.embed({"array": waveform[0], "sampling_rate": waveform[1]})[0]
    np.testing.assert_allclose(analysis.embedding, embedding.numpy(), atol=1e-5)


def test_encoder_analysis_shows_uncorrelated_unit_principal_components(encoder_folder):
    model = load_model(encoder_folder)
    clip = noise(3.05)  # 306 frames: 19 whole steps and a last step of 2 frames
    analysis = analyze(model, clip, sampling_rate=16000)
    assert analysis.clip_scores is None and analysis.components.shape == (20, 3)
    with torch.no_grad():
        frames = model(**features(model, [clip])).frame_embeddings[0].double().numpy()
    # Independent PCA of the whole steps by the covariance eigenvectors; signs are arbitrary.
    whole = frames[:19] - frames[:19].mean(0)
    values, vectors = np.linalg.eigh(whole.T @ whole)
    top = vectors[:, ::-1][:, :3]
    expected = (frames - frames[:19].mean(0)) @ top / (whole @ top).std(0)
    np.testing.assert_allclose(np.abs(analysis.components), np.abs(expected), atol=1e-6)
    assert analysis.step_end[-1] == pytest.approx(3.06) and analysis.step_start[-1] == pytest.approx(3.04)


def test_plot_command_writes_a_readable_figure(classifier_folder, encoder_folder, tmp_path, capsys):
    for folder in (classifier_folder, encoder_folder):
        output = tmp_path / f"{folder.name}.png"
        assert main(["plot", str(folder), str(RECORDING), "--output", str(output)]) == 0
        assert f"Wrote {output}" in capsys.readouterr().out
        image = mpimg.imread(output)
        assert image.shape[0] > 600 and image.shape[1] > 1000
        assert image[..., :3].std() > 0.1  # a drawn figure, not a blank canvas


def test_plot_command_keeps_an_existing_image_unless_told_and_needs_an_image_path(classifier_folder, tmp_path, capsys):
    output = tmp_path / "figure.png"
    output.write_bytes(b"an earlier figure")
    assert main(["plot", str(classifier_folder), str(RECORDING), "--output", str(output)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"resp-hf plot: error: {output} exists; pass --overwrite to replace it, or choose another path."
    assert output.read_bytes() == b"an earlier figure"
    assert main(["plot", str(classifier_folder), str(RECORDING), "--output", str(output), "--overwrite"]) == 0
    assert mpimg.imread(output).shape[0] > 600
    for bad in ("", str(tmp_path / "figure"), str(tmp_path / "figure.xyz")):
        assert main(["plot", str(classifier_folder), str(RECORDING), "--output", bad]) == 2
        assert f"The figure path {bad!r} needs an image extension, one of:" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["figure.png"]


def test_plot_title_and_axes_carry_the_result(classifier_folder):
    analysis = analyze(load_model(classifier_folder), str(RECORDING))
    figure = plot_analysis(analysis, name=RECORDING.name)
    best, score = next(iter(analysis.clip_scores.items()))
    assert f"{best} {score:.2f}" in figure._suptitle.get_text()
    spectrogram, scores = figure.axes[:2]
    assert scores.get_xlabel() == "time (s)" and scores.get_xlim() == pytest.approx((0, analysis.duration))
    assert [text.get_text() for text in scores.get_legend().get_texts()] == list(analysis.clip_scores)


def test_plot_command_reports_bad_audio_in_one_line(classifier_folder, tmp_path, capsys):
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([noise(1.0), noise(1.0, seed=1)], axis=1), 16000)
    assert main(["plot", str(classifier_folder), str(stereo), "--output", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("resp-hf plot: error: audio file") and "\n" not in error  # before the model loads
    assert "multichannel" in error and "downmix" in error and str(stereo) in error
    assert main(["plot", str(classifier_folder), str(stereo), "--output", str(tmp_path / "x.png"), "--downmix"]) == 0
    missing = tmp_path / "missing.wav"
    assert main(["plot", str(classifier_folder), str(missing), "--output", str(tmp_path / "y.png")]) == 2
    assert "not found" in capsys.readouterr().err
