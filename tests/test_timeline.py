"""Time-resolved scores: `frame_logits` on the model and `return_timeline=True` in the pipeline."""

import pytest
import torch
from conftest import noise, tiny_config
from transformers import pipeline

from resp_hf import RespM2DFeatureExtractor, RespM2DForAudioClassification

LABELS = {0: "normal", 1: "crackle", 2: "wheeze"}


def make_classifier(seed=0, labels=LABELS, **overrides):
    """A tiny classifier with a head large enough that scores differ between steps."""
    torch.manual_seed(seed)
    config = tiny_config(
        num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}, **overrides
    )
    model = RespM2DForAudioClassification(config).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.05)
    model.head_norm.running_mean.normal_(std=0.1)  # non-trivial statistics, so that steps are normalized for real
    model.head_norm.running_var.uniform_(0.5, 2.0)
    return model


def save_classifier(folder, seed=0, labels=LABELS, **overrides):
    model = make_classifier(seed, labels, **overrides)
    model.save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(model.config).save_pretrained(folder)
    return model


def features(model, clips):
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    return extractor(clips, sampling_rate=16000, return_attention_mask=True)


@pytest.mark.parametrize("overrides", [{}, {"pooling": "mean"}, {"classifier_layer": 0}])
def test_step_logits_are_the_head_on_each_step_and_average_to_the_clip_logits(overrides):
    model = make_classifier(**overrides)
    inputs = features(model, [noise(2.3), noise(0.7, seed=1)])
    with torch.no_grad():
        timeline = model.frame_logits(**inputs)
        clip_logits = model(**inputs).logits
        encoder = model.resp_m2d(**inputs, output_hidden_states=True)
    torch.testing.assert_close(timeline["logits"], clip_logits)
    # The head on one step, written out: the layer's frame embedding (band mean for "mean"), BatchNorm, linear.
    layer = overrides.get("classifier_layer")
    if layer is None:
        frames = encoder.frame_embeddings
    else:
        # Original M2D numbering: layer k < L-1 is the output of block k + 1 before the final LayerNorm.
        tokens = encoder.hidden_states[layer + 1][:, :, 1:]  # (batch, chunks, F * T, D), frequency-major
        batch, chunks, _, width = tokens.shape
        tokens = tokens.reshape(batch, chunks, model.config.num_frequency_patches, -1, width)
        frames = tokens.permute(0, 1, 3, 2, 4).reshape(batch, -1, model.config.num_frequency_patches * width)
    if overrides.get("pooling") == "mean":
        frames = frames.reshape(*frames.shape[:2], model.config.num_frequency_patches, -1).mean(2)
    norm = model.head_norm
    expected = model.classifier((frames - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps))
    mask = timeline["step_mask"]
    torch.testing.assert_close(timeline["step_logits"][mask], expected[:, : mask.shape[1]][mask].detach())
    assert not timeline["step_logits"][~mask].any()
    mean = timeline["step_logits"].sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(mean, clip_logits, atol=1e-5, rtol=1e-5)


def test_batched_steps_equal_each_clip_alone():
    model = make_classifier()
    clips = [noise(0.7, seed=1), noise(2.3), noise(1.25, seed=2)]
    with torch.no_grad():
        batched = model.frame_logits(**features(model, clips))
        for row, clip in enumerate(clips):
            alone = model.frame_logits(**features(model, [clip]))
            steps = int(alone["step_mask"].sum())
            assert int(batched["step_mask"][row].sum()) == steps
            for key in ("step_logits", "step_start", "step_end"):
                torch.testing.assert_close(batched[key][row, :steps], alone[key][0, :steps], atol=2e-5, rtol=1e-5)
                assert not batched[key][row, steps:].any(), key
            torch.testing.assert_close(batched["logits"][row], alone["logits"][0], atol=2e-5, rtol=1e-5)


def test_step_times_follow_patch_columns_and_chunks():
    # 100-frame chunks with 16-frame patches: 6 columns per chunk, the 4 leftover frames of each chunk unused.
    model = make_classifier(input_size=(80, 100))
    # 1 + 36800 // 160 = 231 frames, padded to whole patches (240): pieces of 100, 100 and 40 -> 6 + 6 + 2 steps
    clip = noise(2.3)
    with torch.no_grad():
        timeline = model.frame_logits(**features(model, [clip]))
    assert int(timeline["step_mask"].sum()) == 14
    first_frames = [chunk * 100 + column * 16 for chunk in range(2) for column in range(6)] + [200, 216]
    expected_start = torch.tensor(first_frames) * 0.01
    expected_end = torch.tensor([frame + 16 for frame in first_frames[:-1]] + [231]) * 0.01  # the clip's last frame
    torch.testing.assert_close(timeline["step_start"][0], expected_start.float())
    torch.testing.assert_close(timeline["step_end"][0], expected_end.float())


def test_cls_pooling_has_no_steps():
    model = make_classifier(pooling="cls")
    with pytest.raises(ValueError, match="pooling='cls'"):
        model.frame_logits(**features(model, [noise(1.0)]))


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timeline_classifier")
    return folder, save_classifier(folder)


def test_pipeline_timeline_scores_steps_like_clips_batched_or_not(classifier_folder):
    folder, model = classifier_folder
    classify = pipeline("audio-classification", model=str(folder), trust_remote_code=True)
    clips = [{"array": noise(0.9, seed=3), "sampling_rate": 16000}, {"array": noise(2.3), "sampling_rate": 16000}]
    batched = classify(clips, return_timeline=True, batch_size=2)
    for clip, result in zip(clips, batched):
        alone = classify(clip, return_timeline=True)
        plain = classify(clip)
        assert [entry["label"] for entry in alone] == [entry["label"] for entry in plain]
        with torch.no_grad():
            timeline = model.frame_logits(**features(model, [clip["array"]]))
        mask = timeline["step_mask"][0]
        expected = timeline["step_logits"][0][mask].softmax(-1)
        for entry, entry_alone in zip(result, alone):
            assert entry["label"] == entry_alone["label"]
            assert entry["score"] == pytest.approx(entry_alone["score"], abs=1e-5)
            steps, steps_alone = entry["timeline"], entry_alone["timeline"]
            assert steps["start"] == pytest.approx(steps_alone["start"]) and steps["end"] == steps_alone["end"]
            assert steps["score"] == pytest.approx(steps_alone["score"], abs=1e-5)
            label_id = model.config.label2id[entry["label"]]
            assert steps["score"] == pytest.approx(expected[:, label_id].tolist(), abs=1e-5)
            assert steps["start"] == pytest.approx(timeline["step_start"][0][mask].tolist())
            assert steps["end"][-1] == pytest.approx(len(clip["array"]) / 16000, abs=0.011)
    assert all("timeline" not in entry for entry in classify(clips[0]))


def test_pipeline_timeline_uses_sigmoid_for_multi_label_and_keeps_top_k(tmp_path):
    model = save_classifier(tmp_path, problem_type="multi_label_classification")
    classify = pipeline("audio-classification", model=str(tmp_path), trust_remote_code=True)
    result = classify({"array": noise(1.0), "sampling_rate": 16000}, return_timeline=True, top_k=2)
    assert len(result) == 2
    with torch.no_grad():
        timeline = model.frame_logits(**features(model, [noise(1.0)]))
    expected = timeline["step_logits"][0].sigmoid()
    for entry in result:
        assert entry["timeline"]["score"] == pytest.approx(expected[:, model.config.label2id[entry["label"]]].tolist())
