import math

import numpy as np
import pytest
import soundfile
import torch
from conftest import noise, tiny_config, tiny_model
from transformers import AutoModel

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel


def original_runtime_frames(model, features):
    """
    The original runtime's loop for one clip: pad to whole patches, encode each chunk alone, concatenate.
    (Where the unit is not a multiple of the patch, a last piece narrower than a patch crashes the original's
    convolution; it holds no whole patch, so it is skipped here.)
    """
    config = model.config
    unit, patch_frames, bands = config.unit_frames, config.patch_size[1], config.num_frequency_patches
    width = config.hidden_size
    chunks = math.ceil(features.shape[-1] / unit)
    x = torch.nn.functional.pad(
        features[None, None], (0, (patch_frames - features.shape[-1] % patch_frames) % patch_frames)
    )
    table = model.embeddings.position_embeddings
    outputs = []
    for i in range(chunks):
        if x[..., i * unit : (i + 1) * unit].shape[-1] < patch_frames:
            continue
        patches = (
            model.embeddings.patch_embeddings.projection(x[..., i * unit : (i + 1) * unit]).flatten(2).transpose(1, 2)
        )
        columns = patches.shape[1] // bands
        positions = table[:, 1:].reshape(1, bands, -1, width)[:, :, :columns].reshape(1, bands * columns, width)
        hidden = torch.cat([model.embeddings.cls_token + table[:, :1], patches + positions], dim=1)
        for layer in model.encoder.layer:
            hidden, _ = layer(hidden)
        tokens = model.layernorm(hidden)[:, 1:]
        outputs.append(tokens.reshape(1, bands, columns, width).permute(0, 2, 1, 3).reshape(1, columns, bands * width))
    return torch.cat(outputs, dim=1)[0]


@pytest.mark.parametrize(
    "input_size, patch_size",
    [((80, 96), (16, 16)), ((80, 100), (16, 16)), ((80, 40), (80, 4)), ((64, 48), (16, 8))],
)
def test_batched_chunking_matches_the_original_loop(input_size, patch_size):
    model = tiny_model(input_size=input_size, patch_size=patch_size)
    lengths = [2, 31, 95, 96, 97, 100, 101, 113, 250, 305]
    torch.manual_seed(1)
    features = torch.zeros(len(lengths), input_size[0], max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        features[row, :, :length] = torch.randn(input_size[0], length)
        features[row, :, length:] = 7.0  # garbage beyond the mask must not leak in
        mask[row, :length] = 1
    with torch.no_grad():
        output = model(features, attention_mask=mask)
        for row, length in enumerate(lengths):
            expected = original_runtime_frames(model, features[row, :, :length])
            steps = int(output.frame_mask[row].sum())
            assert steps == expected.shape[0], (length, steps, expected.shape)
            torch.testing.assert_close(output.frame_embeddings[row, :steps], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(output.pooler_output[row], expected.mean(0), atol=1e-5, rtol=0)
            assert torch.all(output.frame_embeddings[row, steps:] == 0)


def test_golden_batch_equals_each_clip_alone(golden_folder, golden_audio):
    model = RespM2DModel.from_pretrained(golden_folder).eval()
    extractor = RespM2DFeatureExtractor.from_pretrained(golden_folder)
    names = list(golden_audio)
    with torch.no_grad():
        batch = model(**extractor([golden_audio[name] for name in names], sampling_rate=16000))
        for row, name in enumerate(names):
            alone = model(**extractor(golden_audio[name], sampling_rate=16000))
            steps = alone.frame_embeddings.shape[1]
            assert int(batch.frame_mask[row].sum()) == steps
            torch.testing.assert_close(
                batch.frame_embeddings[row, :steps], alone.frame_embeddings[0], atol=1e-4, rtol=0
            )
            torch.testing.assert_close(batch.pooler_output[row], alone.pooler_output[0], atol=1e-4, rtol=0)


def test_output_shapes_hidden_states_and_attention_masking():
    model = tiny_model()
    config = model.config
    features = torch.randn(2, 80, 200)
    mask = torch.ones(2, 200, dtype=torch.long)
    mask[1, 40:] = 0
    with torch.no_grad():
        output = model(features, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    tokens = 1 + config.num_frequency_patches * config.time_patches_per_chunk
    assert output.last_hidden_state.shape == (2, 3, tokens, 64)  # 200 frames -> chunks of 96, 96, 8
    assert output.frame_embeddings.shape == (2, 13, 5 * 64)
    assert output.frame_mask.sum(1).tolist() == [13, 3]
    assert output.pooler_output.shape == (2, config.pooled_size) == (2, 320)
    assert len(output.hidden_states) == config.num_hidden_layers + 1
    assert len(output.attentions) == config.num_hidden_layers
    attention = output.attentions[0]
    assert attention.shape == (2, 3, 4, tokens, tokens)
    torch.testing.assert_close(attention[0, 0].sum(-1), torch.ones(4, tokens))
    # Clip 1 has 3 patch columns in chunk 0: keys of the other columns get exactly zero weight.
    keys = torch.arange(tokens - 1) % config.time_patches_per_chunk
    assert torch.all(attention[1, 0][..., 1:][..., keys >= 3] == 0)
    assert torch.all(output.last_hidden_state[1, 1:] == 0)  # chunks without frames of clip 1


def test_pooling_modes():
    features = torch.randn(2, 80, 150)
    mask = torch.ones(2, 150, dtype=torch.long)
    mask[1, 70:] = 0
    outputs = {}
    for pooling in ("frequency", "mean", "cls"):
        model = tiny_model(pooling=pooling)
        with torch.no_grad():
            outputs[pooling] = model(features, attention_mask=mask)
    frequency = outputs["frequency"]
    tokens = frequency.last_hidden_state[1, 0, 1:].reshape(5, 6, 64)[:, :5]  # clip 1: 70 frames -> 5 columns
    torch.testing.assert_close(outputs["mean"].pooler_output[1], tokens.reshape(-1, 64).mean(0))
    torch.testing.assert_close(outputs["cls"].pooler_output[1], frequency.last_hidden_state[1, 0, 0])
    torch.testing.assert_close(outputs["cls"].pooler_output[0], frequency.last_hidden_state[0, :, 0].mean(0))
    assert outputs["mean"].pooler_output.shape == outputs["cls"].pooler_output.shape == (2, 64)


def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_gradients():
    features = torch.randn(2, 80, 120)
    gradients, norm_calls = [], []
    for checkpointing in (False, True):
        model = tiny_model(seed=3, hidden_dropout_prob=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        calls = []
        model.encoder.layer[0].layernorm_before.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        model(features).pooler_output.square().sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        norm_calls.append(len(calls))
    assert norm_calls[1] == 2 * norm_calls[0]  # the checkpointed block ran again during backward
    torch.testing.assert_close(gradients[0], gradients[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float32(dtype):
    model = tiny_model()
    features = torch.randn(2, 80, 150)
    with torch.no_grad():
        reference = model(features).pooler_output
        half = model.to(dtype)(features).pooler_output
    assert half.dtype == dtype
    assert torch.nn.functional.cosine_similarity(half.float(), reference).min() > 0.99


def test_save_and_load_is_bit_identical(tmp_path):
    model = tiny_model(seed=5)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is RespM2DModel
    reference, restored = model.state_dict(), loaded.state_dict()
    assert reference.keys() == restored.keys()
    assert all(torch.equal(reference[key], restored[key]) for key in reference)
    features = torch.randn(1, 80, 130)
    with torch.no_grad():
        assert torch.equal(model(features).frame_embeddings, loaded(features).frame_embeddings)


def test_device_map_loading(tmp_path):
    model = tiny_model(seed=6)
    model.save_pretrained(tmp_path)
    loaded = RespM2DModel.from_pretrained(tmp_path, device_map="cpu", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
    assert torch.equal(loaded.embeddings.cls_token, model.embeddings.cls_token.to(torch.bfloat16))


def test_embed_takes_arrays_dicts_and_files_in_any_order(tmp_path):
    model = tiny_model(norm_mean=-6.0)
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    clip_a, clip_b = noise(2.5, seed=1), noise(0.4, seed=2)
    clip_44k = noise(1.2, rate=44100, seed=3)
    path = tmp_path / "stereo_8k.wav"
    stereo_8k = np.stack([noise(3.1, rate=8000, seed=4), noise(3.1, rate=8000, seed=5)], axis=1)
    soundfile.write(path, stereo_8k, 8000, subtype="PCM_16")
    inputs = [clip_a, {"array": clip_44k, "sampling_rate": 44100}, str(path), clip_b]
    embeddings = model.embed(inputs, sampling_rate=16000, batch_size=2, downmix=True, progress=False)
    assert embeddings.shape == (4, model.config.pooled_size)
    file_audio = soundfile.read(path, dtype="float32")[0].mean(axis=1)
    references = [(clip_a, 16000), (clip_44k, 44100), (file_audio, 8000), (clip_b, 16000)]
    with torch.no_grad():
        for row, (audio, rate) in enumerate(references):
            expected = model(**extractor(audio, sampling_rate=rate)).pooler_output[0]
            torch.testing.assert_close(embeddings[row], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.embed(clip_b, sampling_rate=16000)[0], embeddings[3], atol=1e-5, rtol=0)


def test_embed_errors_name_the_problem(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="pass `sampling_rate`"):
        model.embed([noise(1.0)])
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        model.embed([str(tmp_path / "nowhere.wav")])
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEnot really")
    with pytest.raises(ValueError, match="Could not read audio file .*broken.wav"):
        model.embed([str(tmp_path / "broken.wav")])
    with pytest.raises(ValueError, match=r"Input 1 is a dict with keys \['array'\]"):
        model.embed([noise(1.0), {"array": noise(1.0)}], sampling_rate=16000)
    with pytest.raises(ValueError, match="empty list"):
        model.embed([])


def test_embed_runs_in_eval_mode_and_restores_the_mode():
    model = tiny_model(hidden_dropout_prob=0.5).train()
    clips = [noise(1.0, seed=1), {"raw": noise(0.7, seed=2), "sampling_rate": 16000}]
    first = model.embed(clips, sampling_rate=16000, progress=False)
    assert model.training
    torch.testing.assert_close(model.embed(clips, sampling_rate=16000, progress=False), first, atol=0, rtol=0)
    torch.testing.assert_close(model.eval().embed(clips, sampling_rate=16000, progress=False), first, atol=0, rtol=0)


def test_eager_attention_gives_the_sdpa_result(tmp_path, monkeypatch):
    tiny_model().save_pretrained(tmp_path)
    features, mask = torch.randn(2, 80, 150), torch.ones(2, 150, dtype=torch.long)
    mask[1, 60:] = 0
    sdpa, calls = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    outputs = {}
    for implementation in ("sdpa", "eager"):
        model = RespM2DModel.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        calls.clear()
        with torch.no_grad():
            outputs[implementation] = model(features, attention_mask=mask).pooler_output
        assert bool(calls) == (implementation == "sdpa")
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "features, mask, message",
    [
        (torch.randn(80, 100), None, r"\(batch, 80, frames\)"),
        (torch.randn(1, 64, 100), None, r"\(batch, 80, frames\)"),
        (torch.randn(2, 80, 100), torch.ones(2, 90), "attention_mask must be"),
        (torch.randn(1, 80, 100), torch.zeros(1, 100), r"Clip 0 has no frames"),
        (torch.randn(3, 80, 100), torch.ones(3, 100).index_fill(0, torch.tensor([0, 2]), 0), r"Clips 0, 2 have no"),
        (torch.randn(2, 80, 0), None, "no frames"),
        (torch.randn(1, 80, 100), torch.arange(100)[None] >= 50, "right-padded"),
    ],
)
def test_bad_model_inputs_are_clear_errors(features, mask, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(features, attention_mask=mask)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"input_size": (80, 608), "patch_size": (24, 16)}, "multiple of the patch height"),
        ({"hidden_size": 100, "num_attention_heads": 12}, "not a multiple of num_attention_heads"),
        ({"pooling": "max"}, "pooling='max'"),
        ({"sampling_rate": 22050}, "No front-end defaults"),
        ({"norm_std": 0.0}, "norm_std finite and positive, got -7.1 and 0.0"),
        ({"norm_mean": float("nan")}, "norm_mean must be finite"),
        ({"norm_std": float("inf")}, "norm_std finite and positive"),
        ({"f_max": 9000.0}, r"f_max <= sampling_rate / 2 = 8000 Hz, got f_min=50 and f_max=9000"),
        ({"f_min": 8000.0}, "f_min < f_max"),
        ({"classifier_layer": True}, "classifier_layer=True"),
        ({"classifier_layer": 13}, "index 0..12"),
    ],
)
def test_bad_configs_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        RespM2DConfig(**overrides)


def test_config_describes_vit_base_frequency_embeddings():
    config = RespM2DConfig()
    assert config.num_frequency_patches == 5 and config.time_patches_per_chunk == 38
    assert config.frame_embedding_size == config.pooled_size == 3840
    assert RespM2DConfig(pooling="mean").pooled_size == 768
    long_unit = RespM2DConfig(input_size=(80, 1001))
    assert long_unit.time_patches_per_chunk == 62
    assert tiny_config(patch_size=(80, 4), input_size=(80, 40)).frame_embedding_size == 64
