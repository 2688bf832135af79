import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import soxr
import torch
from conftest import OPERA, noise, tiny_config
from transformers import pipeline

from resp_hf import RespM2DFeatureExtractor, RespM2DForAudioClassification, RespM2DModel
from resp_hf.models.resp_m2d.audio_utils_resp_m2d import load_audio

ICBHI = OPERA / "datasets" / "icbhi" / "ICBHI_final_database"
KAUH = OPERA / "datasets" / "KAUH" / "AudioFiles"
RECORDINGS = [
    ICBHI / "101_1b1_Al_sc_Meditron.wav",  # 44.1 kHz, 32-bit
    ICBHI / "101_1b1_Pr_sc_Meditron.wav",  # 44.1 kHz, 24-bit
    ICBHI / "102_1b1_Ar_sc_Meditron.wav",  # 44.1 kHz, 16-bit
    ICBHI / "104_1b1_Al_sc_Litt3200.wav",  # 4 kHz, 16-bit
    KAUH / "BP10_Asthma,E W,P R U,59,M.wav",  # 4 kHz, 16-bit
    KAUH / "BP12_Asthma,E W,P L L,50,F.wav",
]
LABELS = {0: "healthy", 1: "copd"}


def save_classifier(folder, seed=0, **overrides):
    torch.manual_seed(seed)
    labels = overrides.pop("id2label", LABELS)
    config = tiny_config(
        num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}, **overrides
    )
    model = RespM2DForAudioClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.05)  # a visible decision, unlike the fresh head's 2e-5
    model.save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(config).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    return folder, save_classifier(folder)


def expected_scores(model, audio, function=torch.softmax):
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    with torch.no_grad():
        logits = model(**extractor(audio, sampling_rate=16000)).logits[0]
    scores = function(logits, -1) if function is torch.softmax else function(logits)
    return {model.config.id2label[i]: float(score) for i, score in enumerate(scores)}


def as_dict(result):
    return {entry["label"]: entry["score"] for entry in result}


def assert_scores_close(result, expected, atol=1e-5):
    got = as_dict(result)
    assert got.keys() == expected.keys()
    for label, score in expected.items():
        assert got[label] == pytest.approx(score, abs=atol), label


def test_pipeline_classifies_real_recordings_from_a_folder(classifier):
    folder, model = classifier
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    assert type(classify).__name__ == "RespM2DAudioClassificationPipeline"
    assert type(classify).__module__.startswith("transformers_modules.")
    for path in RECORDINGS:
        result = classify(str(path))
        assert [entry["score"] for entry in result] == sorted((entry["score"] for entry in result), reverse=True)
        assert sum(entry["score"] for entry in result) == pytest.approx(1.0, abs=1e-6)
        assert_scores_close(result, expected_scores(model, load_audio(path, 16000)))


def test_batched_pipeline_gives_the_same_scores_as_one_at_a_time(classifier):
    folder, _ = classifier
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    paths = [str(path) for path in RECORDINGS]
    one_by_one = [classify(path) for path in paths]
    batched = classify(paths, batch_size=4)
    assert len(batched) == len(paths)
    for single, together in zip(one_by_one, batched):
        assert_scores_close(together, as_dict(single))


def test_pipeline_takes_arrays_dicts_and_top_k(classifier):
    folder, model = classifier
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    audio = noise(3.0, seed=11)
    assert_scores_close(classify(audio), expected_scores(model, audio))
    pcm = (audio * 2**15).astype(np.int16)
    assert_scores_close(classify(pcm), expected_scores(model, pcm.astype(np.float32) / 2**15))
    audio_44k = noise(2.0, rate=44100, seed=12)
    resampled = soxr.resample(audio_44k, 44100, 16000, quality="HQ")
    assert_scores_close(classify({"array": audio_44k, "sampling_rate": 44100}), expected_scores(model, resampled))
    top = classify(audio, top_k=1)
    assert len(top) == 1 and top[0]["label"] == max(expected_scores(model, audio).items(), key=lambda kv: kv[1])[0]


def test_multi_label_models_score_with_a_sigmoid(tmp_path):
    labels = {0: "crackle", 1: "wheeze", 2: "normal"}
    model = save_classifier(tmp_path, id2label=labels, problem_type="multi_label_classification")
    classify = pipeline("audio-classification", model=str(tmp_path), trust_remote_code=True)
    audio = noise(2.0, seed=13)
    result = classify(audio)
    assert_scores_close(result, expected_scores(model, audio, function=torch.sigmoid))
    assert sum(entry["score"] for entry in result) != pytest.approx(1.0, abs=1e-3)


def test_single_label_scores_follow_function_to_apply(classifier):
    folder, model = classifier
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    audio = noise(2.0, seed=14)
    assert_scores_close(
        classify(audio, function_to_apply="sigmoid"), expected_scores(model, audio, function=torch.sigmoid)
    )


def test_pipeline_input_errors_name_the_problem(classifier, tmp_path):
    folder, model = classifier
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    stereo = tmp_path / "stereo.wav"
    left, right = noise(2.0, rate=8000, seed=1), noise(2.0, rate=8000, seed=2)
    soundfile.write(stereo, np.stack([left, right], axis=1), 8000)
    with pytest.raises(ValueError, match="stereo.wav.*multichannel"):
        classify(str(stereo))
    assert_scores_close(
        classify(str(stereo), downmix=True), expected_scores(model, load_audio(stereo, 16000, downmix=True))
    )
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        classify(str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        classify(np.full(16000, np.nan, dtype=np.float32))


def test_pipeline_reads_bytes_urls_and_arrays_at_a_given_rate(classifier):
    folder, model = classifier
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    path = RECORDINGS[3]  # 4 kHz
    expected = expected_scores(model, load_audio(path, 16000))
    assert_scores_close(classify(path.read_bytes()), expected)
    with serve_folder(path.parent) as url:
        assert_scores_close(classify(f"{url}/{path.name}"), expected)
    audio_8k = noise(2.0, rate=8000, seed=15)
    at_8k = classify(audio_8k, sampling_rate=8000)
    assert_scores_close(at_8k, as_dict(classify({"array": audio_8k, "sampling_rate": 8000})))
    assert_scores_close(at_8k, expected_scores(model, soxr.resample(audio_8k, 8000, 16000, quality="HQ")))
    with pytest.raises(ValueError, match="Could not read the audio bytes"):
        classify(b"not audio")
    with pytest.raises(ValueError, match=r"keys \['array'\].*'sampling_rate'"):
        classify({"array": audio_8k})
    with pytest.raises(TypeError, match="downmx"):
        classify(audio_8k, downmx=True)


def test_batches_are_masked_even_when_the_extractor_does_not_return_masks_by_default(classifier, tmp_path):
    folder, _ = classifier
    shutil.copytree(folder, tmp_path / "model", dirs_exist_ok=True)
    extractor = RespM2DFeatureExtractor.from_pretrained(tmp_path / "model")
    extractor.return_attention_mask = False
    extractor.save_pretrained(tmp_path / "model")
    classify = pipeline("audio-classification", model=str(tmp_path / "model"), trust_remote_code=True)
    clips = [noise(seconds, seed=i) for i, seconds in enumerate((0.5, 2.0, 1.2))]
    for single, together in zip([classify(clip) for clip in clips], classify(clips, batch_size=3)):
        assert_scores_close(together, as_dict(single))


@contextlib.contextmanager
def serve_folder(folder):
    """Serves `folder` over HTTP on localhost for the duration of the block; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def build_hub_cache(folder, cache_dir, repo_id, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lays out `folder` as the Hub cache would after downloading `repo_id` at `commit`."""
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


HUB_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["resp_hf"] = None  # only the repo's remote code may be used
    from transformers import AutoModel, pipeline

    classify = pipeline("audio-classification", model="org/resp-m2d", trust_remote_code=True)
    encoder = AutoModel.from_pretrained("org/resp-m2d", trust_remote_code=True)
    embed = pipeline("feature-extraction", model="org/resp-m2d", trust_remote_code=True)
    result = {"result": classify(sys.argv[1]), "encoder": type(encoder).__name__, "embedding": embed(sys.argv[1])}
    print(json.dumps(result))
    """
)


def test_pipeline_from_a_repo_id_in_the_hub_cache_offline(classifier, tmp_path):
    folder, model = classifier
    build_hub_cache(folder, tmp_path / "hub", "org/resp-m2d")
    script = tmp_path / "hub_pipeline.py"
    script.write_text(HUB_SCRIPT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "home"),
    }
    path = RECORDINGS[-1]
    run = subprocess.run(
        [sys.executable, script, str(path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert run.returncode == 0, run.stderr
    output = json.loads(run.stdout.strip().splitlines()[-1])
    assert output["encoder"] == "RespM2DModel"
    assert_scores_close(output["result"], expected_scores(model, load_audio(path, 16000)))
    expected = model.resp_m2d.embed(str(path))[0]
    torch.testing.assert_close(torch.tensor(output["embedding"]), expected, atol=1e-5, rtol=0)


# feature-extraction pipeline, input forms and errors


def test_feature_extraction_pipeline_returns_the_clip_embeddings(classifier):
    folder, model = classifier
    embed = pipeline("feature-extraction", model=str(folder), trust_remote_code=True)
    clips = [noise(1.5, seed=1), str(RECORDINGS[3]), {"array": noise(0.8, rate=8000, seed=2), "sampling_rate": 8000}]
    expected = model.resp_m2d.embed(clips, sampling_rate=16000)
    for batch_size in (1, 3):
        outputs = embed(clips, sampling_rate=16000, batch_size=batch_size)
        assert [len(output) for output in outputs] == [model.config.pooled_size] * 3
        torch.testing.assert_close(torch.tensor(outputs), expected, atol=1e-5, rtol=0)
    as_tensor = embed(noise(1.5, seed=1), sampling_rate=16000, return_tensors=True)
    torch.testing.assert_close(as_tensor, expected[0], atol=1e-5, rtol=0)


def test_the_package_exports_the_model_folders_classes_and_pipelines():
    import resp_hf
    from resp_hf.models import resp_m2d

    assert set(resp_m2d.__all__) <= set(resp_hf.__all__)
    assert resp_hf.RespM2DFeatureExtractionPipeline is resp_m2d.RespM2DFeatureExtractionPipeline


def test_a_list_of_floats_is_one_clip(classifier):
    folder, model = classifier
    audio = noise(1.0, seed=5)
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    assert_scores_close(classify(audio.tolist(), sampling_rate=16000), expected_scores(model, audio))
    embed = pipeline("feature-extraction", model=str(folder), trust_remote_code=True)
    torch.testing.assert_close(
        torch.tensor(embed(audio.tolist(), sampling_rate=16000)), model.resp_m2d.embed(audio, sampling_rate=16000)[0]
    )


def test_torchcodec_style_decoders_are_pipeline_inputs(classifier):
    folder, model = classifier
    audio = noise(1.0, rate=8000, seed=6)
    decoder = SimpleNamespace(
        get_all_samples=lambda: SimpleNamespace(data=torch.from_numpy(audio[None]), sample_rate=8000),
        metadata=SimpleNamespace(sample_rate=8000),
    )
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    expected = expected_scores(model, soxr.resample(audio, 8000, 16000, quality="HQ"))
    assert_scores_close(classify(decoder), expected)
    assert_scores_close(classify([noise(0.5), decoder], sampling_rate=16000, batch_size=2)[1], expected)


@pytest.mark.parametrize("rate", ["16000", True, 0, -16000, float("nan")])
def test_bad_sampling_rates_are_refused_before_reading(classifier, rate):
    classify = pipeline("audio-classification", model=str(classifier[0]), trust_remote_code=True)
    with pytest.raises(ValueError, match="sampling_rate must be a positive integer, got"):
        classify(noise(0.5), sampling_rate=rate)


@pytest.mark.parametrize("top_k", [0, -1, "2", 1.5, True])
def test_bad_top_k_is_refused(classifier, top_k):
    classify = pipeline("audio-classification", model=str(classifier[0]), trust_remote_code=True)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        classify(noise(0.5), top_k=top_k)


def test_empty_batches_and_too_short_files_are_named(classifier, tmp_path):
    classify = pipeline("audio-classification", model=str(classifier[0]), trust_remote_code=True)
    with pytest.raises(ValueError, match="empty list"):
        classify([])
    soundfile.write(tmp_path / "blip.wav", noise(0.5)[:50], 16000)
    with pytest.raises(ValueError, match="audio clip 1 '.*blip.wav' is too short: 50 samples"):
        classify([noise(0.5), str(tmp_path / "blip.wav")])


def test_bad_clip_of_a_batch_is_named_by_its_index(classifier, tmp_path):
    classify = pipeline("audio-classification", model=str(classifier[0]), trust_remote_code=True)
    with pytest.raises(ValueError, match="audio clip 2 contains NaN or Inf"):
        classify([noise(0.5), noise(0.7), np.full(8000, np.nan, dtype=np.float32)], sampling_rate=16000)
    soundfile.write(tmp_path / "clip_8k.wav", noise(0.5, rate=8000), 8000)
    with pytest.raises(ValueError, match=r"the audio clip 1 bytes carries its own sampling rate \(8000 Hz\)"):
        classify([str(RECORDINGS[3]), (tmp_path / "clip_8k.wav").read_bytes()], sampling_rate=4000)


def test_front_end_edited_in_one_file_only_is_refused(classifier, tmp_path):
    shutil.copytree(classifier[0], tmp_path / "model")
    preprocessor = tmp_path / "model" / "preprocessor_config.json"
    settings = json.loads(preprocessor.read_text())
    preprocessor.write_text(json.dumps({**settings, "mean": settings["mean"] + 1.0}))
    for task in ("audio-classification", "feature-extraction"):
        with pytest.raises(ValueError, match=r"disagree on the front end: mean=-4.0 vs norm_mean=-5.0"):
            pipeline(task, model=str(tmp_path / "model"), trust_remote_code=True)


def test_feature_extraction_pipeline_on_a_converted_encoder_folder(golden_folder, golden_audio):
    embed = pipeline("feature-extraction", model=str(golden_folder), trust_remote_code=True)
    clip = golden_audio["icbhi_104_1b1_Al_copd"]
    expected = RespM2DModel.from_pretrained(golden_folder).embed(clip, sampling_rate=16000)[0]
    torch.testing.assert_close(embed(clip, sampling_rate=16000, return_tensors=True), expected, atol=1e-5, rtol=0)


def test_generators_of_clips_are_pipeline_inputs(classifier):
    folder, model = classifier
    clips = [noise(0.6, seed=8), noise(1.1, seed=9)]
    embed = pipeline("feature-extraction", model=str(folder), trust_remote_code=True)
    outputs = list(embed((clip for clip in clips), sampling_rate=16000, batch_size=2))
    torch.testing.assert_close(torch.tensor(outputs), model.resp_m2d.embed(clips, sampling_rate=16000))
