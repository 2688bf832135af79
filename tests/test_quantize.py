import copy
import importlib
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import noise, tiny_config, tiny_model
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from transformers import pipeline

from resp_hf import (
    RespM2DAudioClassificationPipeline,
    RespM2DFeatureExtractionPipeline,
    RespM2DFeatureExtractor,
    RespM2DForAudioClassification,
    RespM2DModel,
    quantize,
)
from resp_hf.cli import main as cli_main
from resp_hf.data import load_audio_folder
from resp_hf.linear_probe import BenchmarkSettings, run_benchmark
from resp_hf.quantize import PackedLinear, cpu_has_bf16_kernels, packs_weights
from resp_hf.synthetic import write_two_class_recordings


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))


def test_every_encoder_linear_becomes_int8_and_the_original_model_is_untouched():
    model = tiny_model()
    quantized = quantize(model, "int8")
    for block, original in zip(quantized.encoder.layer, model.encoder.layer):
        for name in ("attention.qkv", "attention.proj", "mlp.fc1", "mlp.fc2"):
            assert isinstance(block.get_submodule(name), DynamicInt8Linear), name
            assert type(original.get_submodule(name)) is torch.nn.Linear, name
            weight = block.get_submodule(name).weight()  # symmetric per output channel: one scale per row, zero 0
            assert weight.q_per_channel_scales().shape == (weight.shape[0],)
            assert not weight.q_per_channel_zero_points().any()
    assert type(quantized.embeddings.patch_embeddings.projection) is torch.nn.Conv2d
    assert sum(isinstance(m, DynamicInt8Linear) for m in quantized.modules()) == 4 * model.config.num_hidden_layers


def test_int8_forward_and_embed_agree_and_stay_close_to_fp32():
    model = tiny_model()
    quantized = quantize(model, "int8")
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    clips = [noise(seconds, seed=i) for i, seconds in enumerate((0.7, 2.5, 4.0))]
    with torch.no_grad():
        alone = torch.cat([quantized(**extractor(clip, sampling_rate=16000)).pooler_output for clip in clips])
        states = quantized(**extractor(clips[1], sampling_rate=16000), output_hidden_states=True).hidden_states
    one_by_one = quantized.embed(clips, sampling_rate=16000, batch_size=1, progress=False)
    batched = quantized.embed(clips, sampling_rate=16000, batch_size=3, progress=False)
    torch.testing.assert_close(one_by_one, alone, atol=1e-5, rtol=0)
    # Activations are quantized with one range per Linear input, so batch companions shift the rounding slightly.
    assert cosine(batched, alone).min() >= 0.9999
    fp32 = model.embed(clips, sampling_rate=16000, batch_size=1, progress=False)
    assert not torch.equal(one_by_one, fp32)  # the int8 layers ran
    assert cosine(one_by_one, fp32).min() >= 0.999
    assert len(states) == model.config.num_hidden_layers + 1


def two_label_classifier():
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, id2label={0: "healthy", 1: "copd"}, label2id={"healthy": 0, "copd": 1})
    return RespM2DForAudioClassification(config).eval()


def pipeline_scores(model, extractor, clips):
    """The audio-classification pipeline's scores, one row per clip, in label order."""
    # A model object (a quantized copy cannot be saved) takes the package's pipeline through `pipeline_class`.
    classify = pipeline(
        "audio-classification",
        model=model,
        feature_extractor=extractor,
        pipeline_class=RespM2DAudioClassificationPipeline,
    )
    assert type(classify) is RespM2DAudioClassificationPipeline
    outputs = classify(clips, batch_size=2)
    return torch.tensor([[s["score"] for s in sorted(out, key=lambda s: s["label"])] for out in outputs])


def test_int8_classifier_runs_in_the_pipeline_with_its_head_in_fp32():
    model = two_label_classifier()
    quantized = quantize(model, "int8")
    assert type(quantized.classifier) is torch.nn.Linear
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    clips = [noise(1.5, seed=1), noise(3.0, seed=2)]
    int8 = pipeline_scores(quantized, extractor, clips)
    assert int8.shape == (2, 2)
    torch.testing.assert_close(int8, pipeline_scores(model, extractor, clips), atol=0.01, rtol=0)


# Measured, int8: 0.99996-0.99997 on the recordings, 0.99979 on the 0.3-s noise clip (one short chunk, the least
# averaging); the bound leaves 2.4x that distance for other CPUs' float summation order around the int8 products.
# bf16: 0.999994-0.999995 on the recordings, 0.999987 on the noise clip.
@pytest.mark.parametrize("method, bound", [("int8", 0.9995), ("bf16", 0.9999)])
def test_embeddings_of_the_golden_clips_stay_close_to_fp32(method, bound, golden_folder, golden_audio):
    model = RespM2DModel.from_pretrained(golden_folder).eval()
    clips = list(golden_audio.values())
    fp32 = model.embed(clips, sampling_rate=16000, progress=False)
    quantized = quantize(model, method).embed(clips, sampling_rate=16000, progress=False)
    assert cosine(fp32, quantized).min() >= bound


def test_bf16_copy_holds_bfloat16_weights_and_embeds_through_forward_embed_and_both_pipelines():
    model = two_label_classifier()
    bf16 = quantize(model, "bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # on a CPU the written-out attention (faster than SDPA's bf16 kernel there); the original keeps SDPA
    assert (bf16.config._attn_implementation, model.config._attn_implementation) == ("eager", "sdpa")
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    clips = [noise(seconds, seed=i) for i, seconds in enumerate((0.7, 2.5, 4.0))]
    with torch.no_grad():  # float32 features in, cast at the patch embedding
        pooled = bf16.resp_m2d(**extractor(clips, sampling_rate=16000)).pooler_output
    embedded = bf16.resp_m2d.embed(clips, sampling_rate=16000, batch_size=3, progress=False)
    assert pooled.dtype == torch.bfloat16 and embedded.dtype == torch.float32
    torch.testing.assert_close(embedded, pooled.float())
    fp32 = model.resp_m2d.embed(clips, sampling_rate=16000, batch_size=3, progress=False)
    assert not torch.equal(embedded, fp32)  # the bf16 weights ran
    assert cosine(embedded, fp32).min() >= 0.999
    features = RespM2DFeatureExtractionPipeline(model=bf16.resp_m2d, feature_extractor=extractor)
    torch.testing.assert_close(torch.tensor(features(clips[1])), embedded[1], atol=1e-2, rtol=0)
    bf16_scores = pipeline_scores(bf16, extractor, clips)
    torch.testing.assert_close(bf16_scores, pipeline_scores(model, extractor, clips), atol=0.02, rtol=0)


def test_bf16_copy_saves_and_reloads_in_bf16_and_quantizing_after_loading_gives_the_same_embeddings(tmp_path):
    bf16 = quantize(tiny_model(), "bf16")
    bf16.save_pretrained(tmp_path)
    reloaded = RespM2DModel.from_pretrained(tmp_path)
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    reloaded = quantize(reloaded, "bf16")  # the attention choice is not saved
    clip = [noise(2.0)]
    torch.testing.assert_close(
        reloaded.embed(clip, sampling_rate=16000, progress=False), bf16.embed(clip, sampling_rate=16000, progress=False)
    )


def encoder_linears(model):
    return {name: module for name, module in model.encoder.named_modules() if isinstance(module, torch.nn.Linear)}


def test_bf16_copy_on_a_cpu_with_onednn_bf16_packs_every_encoder_linear_and_fuses_gelu_into_fc1(monkeypatch):
    model = tiny_model()
    bf16 = quantize(model, "bf16")
    linears = encoder_linears(bf16)
    assert len(linears) == 4 * model.config.num_hidden_layers
    if packs_weights(torch.bfloat16):  # AVX-512 (BF16) CPUs; elsewhere plain bf16 Linear layers
        assert {type(linear) for linear in linears.values()} == {PackedLinear}
        assert {name for name, linear in linears.items() if linear.activation == "gelu"} == {
            f"layer.{index}.mlp.fc1" for index in range(model.config.num_hidden_layers)
        }
        assert all(isinstance(layer.mlp.activation, torch.nn.Identity) for layer in bf16.encoder.layer)
    else:
        assert {type(linear) for linear in linears.values()} == {torch.nn.Linear}
    assert {type(linear) for linear in encoder_linears(model).values()} == {torch.nn.Linear}  # the original
    monkeypatch.setattr(importlib.import_module("resp_hf.quantize"), "packs_weights", lambda dtype: False)
    assert {type(linear) for linear in encoder_linears(quantize(model, "bf16")).values()} == {torch.nn.Linear}
    gelu = quantize(tiny_model(hidden_act="gelu_new"), "bf16")  # the tanh GELU is not fused
    assert all(getattr(linear, "activation", "none") == "none" for linear in encoder_linears(gelu).values())
    assert all(not isinstance(layer.mlp.activation, torch.nn.Identity) for layer in gelu.encoder.layer)


def test_fp32_copy_packs_every_encoder_linear_and_gives_the_float32_embeddings(golden_folder, golden_audio, tmp_path):
    model = RespM2DModel.from_pretrained(golden_folder)
    packed = quantize(model, "fp32")
    linears = encoder_linears(packed)
    assert {type(linear) for linear in encoder_linears(model).values()} == {torch.nn.Linear}  # the original
    on_onednn = packs_weights(torch.float32)  # PyTorch with oneDNN (x86 builds among them)
    assert {type(linear) for linear in linears.values()} == {PackedLinear if on_onednn else torch.nn.Linear}
    if on_onednn:
        assert {name for name, linear in linears.items() if linear.activation == "gelu"} == {
            f"layer.{index}.mlp.fc1" for index in range(model.config.num_hidden_layers)
        }
    assert {p.dtype for p in packed.parameters()} == {torch.float32}
    clips = list(golden_audio.values())
    reference = model.embed(clips, sampling_rate=16000, batch_size=3, progress=False)
    embedded = packed.embed(clips, sampling_rate=16000, batch_size=3, progress=False)
    assert not on_onednn or packed.encoder.layer[1].mlp.fc2._packed[0].dtype == torch.float32  # the packed path ran
    torch.testing.assert_close(embedded, reference, atol=2e-5, rtol=1e-5)  # float32 rounding only
    packed.save_pretrained(tmp_path)  # the float32 model as it was
    reloaded = RespM2DModel.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(value, reloaded[key]) for key, value in model.state_dict().items())
    with pytest.raises(ValueError, match="pass a float32 model on the CPU"):
        quantize(model.to(torch.bfloat16), "fp32")


def unfolded(packed_copy, config):
    """`packed_copy` with each attention scaling its queries itself again."""
    copied = copy.deepcopy(packed_copy)
    for layer in copied.encoder.layer:
        layer.attention.qkv.output_scale = None
        layer.attention.scaling = (config.hidden_size // config.num_attention_heads) ** -0.5
    return copied


@pytest.mark.parametrize("method", ["bf16", "fp32"])
def test_packed_copies_fold_a_power_of_two_query_scaling_into_qkv_without_changing_a_bit(method):
    model = tiny_model()  # head width 16: scaling 1/4
    packed = quantize(model, method)
    if not packs_weights(torch.bfloat16 if method == "bf16" else torch.float32):  # no oneDNN kernel: nothing packed
        assert {layer.attention.scaling for layer in packed.encoder.layer} == {0.25}
        return
    width = model.config.hidden_size
    for layer, original in zip(packed.encoder.layer, model.encoder.layer):
        assert layer.attention.scaling == 1.0 and original.attention.scaling == 0.25  # the original is untouched
        expected = torch.tensor([0.25] * width + [1.0] * 2 * width)  # queries first, then keys and values
        torch.testing.assert_close(layer.attention.qkv.output_scale, expected, rtol=0, atol=0)
    features = torch.randn(2, 80, 150)
    with torch.no_grad():
        folded = packed(input_features=features, output_attentions=True)
        scaling_itself = unfolded(packed, model.config)(input_features=features, output_attentions=True)
    assert torch.equal(folded.last_hidden_state, scaling_itself.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(folded.attentions, scaling_itself.attentions))
    odd = quantize(tiny_model(hidden_size=48, num_attention_heads=4), method)  # head width 12: 12 ** -0.5 is inexact
    assert all(layer.attention.qkv.output_scale is None for layer in odd.encoder.layer)
    assert {layer.attention.scaling for layer in odd.encoder.layer} == {12**-0.5}


def test_packed_linear_output_scale_scales_both_paths_exactly_and_a_changed_scale_is_repacked():
    linear, packed = packed_pair("none")
    packed.output_scale = torch.tensor([0.5, 2.0, 1.0, 0.125] * 40)
    inputs = torch.randn(3, 96).to(torch.bfloat16)
    scaled_weight = linear.weight * packed.output_scale.to(torch.bfloat16)[:, None]
    scaled_bias = linear.bias * packed.output_scale.to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(packed(inputs), reference_output(scaled_weight, scaled_bias, inputs, "none"))
        packed.output_scale.mul_(2)  # in place: packed again
        torch.testing.assert_close(packed(inputs), reference_output(2 * scaled_weight, 2 * scaled_bias, inputs, "none"))
    packed.weight.requires_grad_(True)  # the plain path: Linear, then the scale
    expected = torch.nn.functional.linear(inputs, linear.weight, linear.bias) * packed.output_scale.to(torch.bfloat16)
    assert torch.equal(packed(inputs), expected)


def packed_pair(activation):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 160).to(torch.bfloat16)
    return linear, PackedLinear.from_linear(linear, activation)


def reference_output(weight, bias, inputs, activation):
    """
    With oneDNN's packed bf16 kernel: the float32 product of the bf16 operands, (GELU), rounded once to bf16. Without
    it (CPUs without bf16 instructions): a plain bf16 Linear, then the GELU in bf16.
    """
    if packs_weights(torch.bfloat16):
        inputs, weight, bias = inputs.float(), weight.float(), bias.float()
    output = torch.nn.functional.linear(inputs, weight, bias)
    return (torch.nn.functional.gelu(output) if activation == "gelu" else output).to(torch.bfloat16)


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_packed_linear_matches_a_float32_product_of_its_bf16_weights_and_follows_weight_changes(activation):
    linear, packed = packed_pair(activation)
    inputs = torch.randn(2, 7, 96).to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(packed(inputs), reference_output(linear.weight, linear.bias, inputs, activation))
        doubled_weight = 2 * linear.weight
        packed.load_state_dict({"weight": doubled_weight, "bias": linear.bias})  # in place: the pack is remade
        torch.testing.assert_close(packed(inputs), reference_output(doubled_weight, linear.bias, inputs, activation))
        packed.weight.mul_(-1)  # in place under no_grad
        torch.testing.assert_close(packed(inputs), reference_output(packed.weight, packed.bias, inputs, activation))
        packed.weight.data = torch.randn_like(packed.weight)  # a new tensor behind the same parameter
        torch.testing.assert_close(packed(inputs), reference_output(packed.weight, packed.bias, inputs, activation))
        packed.float()  # float32 weights: packed again in float32; float32 rounding of another summation order
        expected = torch.nn.functional.linear(inputs.float(), packed.weight, packed.bias)
        expected = torch.nn.functional.gelu(expected) if activation == "gelu" else expected
        torch.testing.assert_close(packed(inputs.float()), expected)
        assert packed._packed[0].dtype == torch.float32 or not packs_weights(torch.float32)


def test_packed_fp32_linear_trains_a_bias_alone_traces_and_keeps_the_gelu_under_lora():
    linear = torch.nn.Linear(96, 160)
    packed = PackedLinear.from_linear(copy.deepcopy(linear), "gelu")
    packed.weight.requires_grad_(False)  # BitFit: only the bias trains
    inputs = torch.randn(4, 96)
    packed(inputs).sum().backward()
    torch.nn.functional.gelu(linear(inputs)).sum().backward()
    torch.testing.assert_close(packed.bias.grad, linear.bias.grad)
    with torch.no_grad():
        traced = torch.jit.trace(packed, (inputs,))
        torch.testing.assert_close(traced(inputs), packed(inputs))
    from resp_hf.lora import add_lora

    torch.manual_seed(0)
    lora = add_lora(RespM2DForAudioClassification(tiny_config(num_labels=2)), rank=4).eval()
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
        features = torch.randn(2, 80, 100)
        expected = lora(input_features=features).logits
        torch.testing.assert_close(quantize(lora, "fp32")(input_features=features).logits, expected)


def test_packed_linear_exports_as_a_plain_linear_and_gelu():
    linear, packed = packed_pair("gelu")
    inputs = torch.randn(3, 96).to(torch.bfloat16)
    exported = torch.export.export(packed.eval(), (inputs,))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert targets == [torch.ops.aten.linear.default, torch.ops.aten.gelu.default]
    with torch.no_grad():
        # bf16 tolerances: unfused, the product is rounded to bf16 before the GELU as well as after
        torch.testing.assert_close(exported.module()(inputs), packed(inputs))


def test_packed_linear_trains_through_the_plain_path_and_the_bf16_copy_deep_copies_and_pickles(tmp_path):
    linear, packed = packed_pair("gelu")
    inputs = torch.randn(5, 96).to(torch.bfloat16)
    packed(inputs).float().sum().backward()  # weights need gradients: nn.Linear + GELU, which has them
    torch.nn.functional.gelu(linear(inputs)).float().sum().backward()
    torch.testing.assert_close(packed.weight.grad, linear.weight.grad, rtol=0, atol=0)
    bf16 = quantize(tiny_model(), "bf16")
    clip = [noise(2.0)]
    embedded = bf16.embed(clip, sampling_rate=16000, progress=False)  # packs every weight
    copied = copy.deepcopy(bf16)
    torch.save(bf16, tmp_path / "bf16.pt")
    unpickled = torch.load(tmp_path / "bf16.pt", weights_only=False)
    for other in (copied, unpickled):
        torch.testing.assert_close(other.embed(clip, sampling_rate=16000, progress=False), embedded, rtol=0, atol=0)


def test_quantized_model_refuses_to_save_and_quantizing_after_loading_works(tmp_path):
    model = tiny_model()
    with pytest.raises(NotImplementedError, match=r"after loading"):
        quantize(model, "int8").save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8" / "config.json").exists()
    with pytest.raises(NotImplementedError, match=r"after loading"):  # nor the encoder inside an int8 classifier
        quantize(two_label_classifier(), "int8").resp_m2d.save_pretrained(tmp_path / "inner")
    assert not (tmp_path / "inner").exists()
    model.save_pretrained(tmp_path / "fp32")
    reloaded = quantize(RespM2DModel.from_pretrained(tmp_path / "fp32"), "int8")
    clip = [noise(2.0)]
    torch.testing.assert_close(
        reloaded.embed(clip, sampling_rate=16000, progress=False),
        quantize(model, "int8").embed(clip, sampling_rate=16000, progress=False),
    )


@pytest.mark.parametrize(
    "machine, avx512_bf16, amx, emulated",
    [
        ("x86_64", False, False, True),  # AVX2 or AVX-512 without BF16 (Zen 3, Skylake-SP): oneDNN emulates bf16
        ("AMD64", False, False, True),
        ("x86_64", True, False, False),  # AVX-512 BF16 (Zen 4, Cooper Lake)
        ("x86_64", False, True, False),  # AMX
        ("aarch64", False, False, False),
    ],
)
def test_bf16_on_a_cpu_without_bf16_instructions_warns_and_still_returns_the_copy(
    monkeypatch, machine, avx512_bf16, amx, emulated
):
    monkeypatch.setattr("platform.machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = quantize(tiny_model(), "bf16")
    messages = [str(warning.message) for warning in caught if "emulated" in str(warning.message)]
    expected = [
        "bf16 on this CPU is emulated (no AVX-512 BF16 or AMX instructions): the model runs about 3x (AVX-512) to "
        "100x (AVX2) slower than in float32. Use quantize(model, 'int8') or float32."
    ]
    assert messages == (expected if emulated else [])
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("capability, native", [("AVX2", False), ("AVX512", True)])
def test_without_torchs_instruction_checks_bf16_is_judged_by_the_kernel_capability(monkeypatch, capability, native):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert cpu_has_bf16_kernels() is native


def test_quantize_rejects_unknown_methods_and_models_without_an_encoder():
    with pytest.raises(ValueError, match=r"Unknown quantization method 'int4'; choose one of: int8, bf16, fp32\."):
        quantize(tiny_model(), "int4")
    with pytest.raises(ValueError, match=r"Sequential has no RespM2D encoder"):
        quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int8")


@pytest.mark.parametrize("method", ["int8", "bf16", "fp32"])
def test_benchmark_quantize_embeds_with_the_quantized_encoder_under_its_own_cache_key(tmp_path, method):
    for seed, split in enumerate(("train", "validation", "test")):
        write_two_class_recordings(tmp_path / "recordings" / split, per_class=6, seed=seed, seconds=(0.5, 1.0))
    load_audio_folder(tmp_path / "recordings").save_to_disk(str(tmp_path / "dataset"))
    encoder = tiny_model()
    encoder.save_pretrained(tmp_path / "encoder")
    last_layer = str(encoder.config.num_hidden_layers - 1)  # the cache names layers by their original M2D number
    cache = tmp_path / "cache"
    arguments = ["benchmark", "--model", str(tmp_path / "encoder"), "--dataset", str(tmp_path / "dataset")]
    arguments += ["--seeds", "0", "--epochs", "1", "--cache-dir", str(cache)]
    cli_main([*arguments, "--output", str(tmp_path / "baseline")])
    assert cli_main([*arguments, "--output", str(tmp_path / method), "--quantize", method]) == 0
    assert json.loads((tmp_path / method / "results.json").read_text())["model_name"] == f"encoder ({method})"
    stored = []
    for path in sorted(cache.glob("*.npz"), key=lambda path: path.stat().st_mtime):
        with np.load(path) as arrays:
            stored.append(torch.from_numpy(arrays[last_layer]))
    assert len(stored) == 6  # three splits, once in fp32 and once quantized
    fp32, quantized = torch.cat(stored[:3]), torch.cat(stored[3:])
    assert quantized.dtype == torch.float32
    if method == "fp32":  # the packed float32 copy: float32 rounding only
        torch.testing.assert_close(quantized, fp32, atol=1e-5, rtol=1e-5)
    else:
        assert not torch.equal(fp32, quantized)
        assert cosine(fp32, quantized).min() >= 0.999


def test_benchmark_quantizes_a_cpu_copy_of_a_model_held_elsewhere_and_puts_the_model_back(monkeypatch):
    from resp_hf.linear_probe import runner

    class Elsewhere(torch.nn.Module):  # a model on another device than the CPU (a GPU), recording its moves
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(2, device="meta"))
            self.moves = []

        def to(self, device):
            self.moves.append(str(device))
            return self

    monkeypatch.setattr(runner, "quantize", lambda model, method: (method, list(model.moves)))
    model = Elsewhere()
    assert runner.quantized_copy(model, "int8") == ("int8", ["cpu"])  # quantized while on the CPU
    assert model.moves == ["cpu", "meta"]  # then back where it was
    assert runner.quantized_copy(model, "bf16") == ("bf16", ["cpu", "meta"])  # bf16 runs where the model is
    assert model.moves == ["cpu", "meta"]


def test_benchmark_command_refuses_an_unknown_quantization_in_one_line(tmp_path, capsys):
    arguments = ["benchmark", "--model", "m", "--dataset", "d", "--output", str(tmp_path / "out"), "--quantize", "int4"]
    assert cli_main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error == "resp-hf benchmark: error: quantize must be one of int8, bf16, fp32 or None, got 'int4'."
    assert not (tmp_path / "out").exists()


def test_benchmark_settings_reject_an_unknown_quantization_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"quantize must be one of int8, bf16, fp32 or None, got 'int4'"):
        run_benchmark(tiny_model(), tmp_path, datasets=[tmp_path / "none"], settings=BenchmarkSettings(quantize="int4"))
