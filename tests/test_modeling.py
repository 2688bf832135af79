"""Tests of `RespM2DModel` and `RespM2DConfig`: tiny config, original runtime, golden checkpoint, embed()."""

import json

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from conftest import RespM2DModelTester, noise, tiny_config, tiny_model
from transformers import AutoModel, AutoModelForAudioClassification

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DForAudioClassification, RespM2DModel


class RunsCode:
    """Unpickling it would create a file: a stand-in for a hostile checkpoint."""

    def __reduce__(self):
        return (open, ("executed", "w"))


def all_tensors(outputs):
    """The tensors of a model's tuple output, per-layer tuples flattened in order."""
    return [tensor for value in outputs for tensor in (value if isinstance(value, tuple) else (value,))]


class TestRespM2DModel:
    """The encoder on the tiny config (`RespM2DModelTester`): outputs, batching, loading, training, attention."""

    @pytest.fixture
    def tester(self):
        return RespM2DModelTester()

    def test_output_shapes_hidden_states_and_attention_masking(self, tester):
        model, config = tiny_model(), tester.config
        features, mask = tester.prepare_inputs()
        with torch.no_grad():
            output = model(features, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        tokens, chunks = tester.seq_length, tester.num_chunks
        assert output.last_hidden_state.shape == (2, chunks, tokens, 64) == (2, 3, 31, 64)  # chunks: 96, 96, 8 frames
        assert output.frame_embeddings.shape == (2, 13, 5 * 64)
        assert output.frame_mask.sum(1).tolist() == [13, 3]
        assert output.pooler_output.shape == (2, config.pooled_size) == (2, 320)
        assert len(output.hidden_states) == config.num_hidden_layers + 1
        assert all(states.shape == (2, chunks, tokens, 64) for states in output.hidden_states)
        assert len(output.attentions) == config.num_hidden_layers
        attention = output.attentions[0]
        assert attention.shape == (2, chunks, 4, tokens, tokens)
        torch.testing.assert_close(attention[0, 0].sum(-1), torch.ones(4, tokens))
        # Clip 1 has 3 patch columns in chunk 0: keys of the other columns get exactly zero weight.
        keys = torch.arange(tokens - 1) % config.time_patches_per_chunk
        assert torch.all(attention[1, 0][..., 1:][..., keys >= 3] == 0)
        assert torch.all(output.last_hidden_state[1, 1:] == 0)  # chunks without frames of clip 1

    def test_determinism_and_tuple_outputs(self, tester):
        """Two eval passes give identical outputs; `return_dict=False` gives the same tensors in a tuple."""
        model = tiny_model(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
        features, mask = tester.prepare_inputs()
        options = dict(attention_mask=mask, output_hidden_states=True, output_attentions=True)
        with torch.no_grad():
            first, second = model(features, **options), model(features, **options)
            as_tuple = model(features, return_dict=False, **options)
        flat = [all_tensors(output) for output in (first.to_tuple(), second.to_tuple(), as_tuple)]
        assert len(as_tuple) == 6 and len(flat[0]) == 4 + 3 + 2  # 4 outputs, 3 hidden states, 2 attention maps
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(*flat))

    @pytest.mark.parametrize("per_layer", [False, True])
    def test_every_output_of_a_clip_has_one_layout_alone_and_in_a_padded_batch(self, per_layer):
        model = tiny_model()
        lengths = [250, 60, 130, 96, 17]
        torch.manual_seed(2)
        features = torch.randn(len(lengths), 80, max(lengths))
        mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
        options = dict(output_hidden_states=per_layer, output_attentions=per_layer)
        tokens = 1 + model.config.num_frequency_patches * model.config.time_patches_per_chunk
        with torch.no_grad():
            batch = model(features, attention_mask=mask, **options)
            assert batch.last_hidden_state.shape == (5, 3, tokens, 64)
            for row, length in enumerate(lengths):
                alone = model(features[row : row + 1, :, :length], **options)
                chunks, steps = alone.last_hidden_state.shape[1], alone.frame_embeddings.shape[1]
                assert alone.last_hidden_state.shape[2] == tokens
                pairs = [(batch.last_hidden_state, alone.last_hidden_state)]
                if per_layer:
                    pairs += list(zip(batch.hidden_states, alone.hidden_states))
                    pairs += list(zip(batch.attentions, alone.attentions))
                for batched, single in pairs:
                    assert batched.shape[2:] == single.shape[2:]
                    torch.testing.assert_close(batched[row, :chunks], single[0], atol=1e-4, rtol=0)
                    assert torch.all(batched[row, chunks:] == 0)
                frames = batch.frame_embeddings[row, :steps]
                torch.testing.assert_close(frames, alone.frame_embeddings[0], atol=1e-4, rtol=0)
                assert torch.all(batch.frame_embeddings[row, steps:] == 0)
                torch.testing.assert_close(batch.pooler_output[row], alone.pooler_output[0], atol=1e-4, rtol=0)

    @pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
    def test_a_clip_padded_on_the_left_or_both_sides_gives_its_right_padded_outputs(self, attn_implementation):
        model = tiny_model(attn_implementation=attn_implementation)
        torch.manual_seed(3)
        lengths, before = [250, 60, 130], [0, 150, 40]  # row 0 unpadded, row 1 left-padded, row 2 on both sides
        clips = [torch.randn(80, length) for length in lengths]
        right, right_mask = torch.zeros(3, 80, 250), torch.zeros(3, 250, dtype=torch.long)
        left_zeros, left_noise = torch.zeros(3, 80, 250), torch.randn(3, 80, 250)  # padding's values do not count
        left_mask = torch.zeros(3, 250, dtype=torch.bool)
        for row, (clip, start) in enumerate(zip(clips, before)):
            right[row, :, : clip.shape[1]], right_mask[row, : clip.shape[1]] = clip, 1
            stretch = slice(start, start + clip.shape[1])
            left_zeros[row, :, stretch], left_noise[row, :, stretch], left_mask[row, stretch] = clip, clip, True
        options = dict(output_hidden_states=True, output_attentions=True)
        with torch.no_grad():
            expected = model(right, attention_mask=right_mask, **options)
            for features in (left_zeros, left_noise):
                received = model(features, attention_mask=left_mask, **options)
                for want, got in zip(all_tensors(expected.to_tuple()), all_tensors(received.to_tuple())):
                    assert torch.equal(want, got)
            alone = model(clips[1][None])
        torch.testing.assert_close(expected.pooler_output[1], alone.pooler_output[0], atol=1e-4, rtol=0)

    def test_save_and_load_is_bit_identical(self, tmp_path):
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

    def test_a_config_that_disagrees_with_the_weights_is_an_error(self, tmp_path):

        tiny_model().save_pretrained(tmp_path / "encoder")
        for layers, kind in ((3, "missing keys: encoder.layer.2."), (1, "unexpected keys: encoder.layer.1.")):
            folder = tmp_path / f"layers{layers}"
            tiny_model().save_pretrained(folder)
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
            with pytest.raises(
                ValueError, match=f"layers{layers}: the configuration does not match the weights \\({kind}"
            ):
                RespM2DModel.from_pretrained(folder)
        classifier = RespM2DForAudioClassification.from_pretrained(tmp_path / "encoder", num_labels=3)  # a new head
        classifier.save_pretrained(tmp_path / "classifier")
        model, info = RespM2DModel.from_pretrained(tmp_path / "classifier", output_loading_info=True)  # head dropped
        assert isinstance(model, RespM2DModel) and set(info) >= {"missing_keys", "unexpected_keys"}

    def test_a_much_deeper_config_is_refused_before_its_weights_are_made(self, tmp_path, monkeypatch):
        """A config.json edited to 500 layers fails on the weight file's header: no block is initialized or filled."""
        tiny_model().save_pretrained(tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 500}))
        initialized = []
        monkeypatch.setattr(RespM2DModel, "_init_weights", lambda self, module: initialized.append(module))
        with pytest.raises(ValueError, match="missing keys: encoder.layer.2.attention.proj.bias, "):
            RespM2DModel.from_pretrained(tmp_path)
        assert initialized == []

    def test_weights_of_other_shapes_are_named(self, tmp_path):

        classifier = RespM2DForAudioClassification(tiny_config(num_labels=2))
        classifier.save_pretrained(tmp_path)
        with pytest.raises(
            RuntimeError,
            match=r"other shapes: encoder.layer.0.mlp.fc1.bias \(128,\) in the weights, \(256,\) configured",
        ):
            RespM2DForAudioClassification.from_pretrained(tmp_path, intermediate_size=256)
        message = r"head in the weights does not fit.*classifier.bias \(2,\) in the weights, \(3,\) configured.*"
        with pytest.raises(RuntimeError, match=message + "ignore_mismatched_sizes=True"):
            RespM2DForAudioClassification.from_pretrained(tmp_path, num_labels=3)
        wider = RespM2DForAudioClassification.from_pretrained(
            tmp_path, intermediate_size=256, ignore_mismatched_sizes=True
        )
        assert wider.resp_m2d.encoder.layer[0].mlp.fc1.weight.shape == (256, 64)  # initialized afresh, as asked
        new_head = RespM2DForAudioClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
        assert new_head.classifier.out_features == 3
        assert torch.equal(
            new_head.resp_m2d.encoder.layer[1].mlp.fc2.weight, classifier.resp_m2d.encoder.layer[1].mlp.fc2.weight
        )

    @pytest.mark.parametrize("damage", ["truncated", "not safetensors", "empty"])
    def test_a_damaged_weights_file_is_named(self, tmp_path, damage):
        tiny_model().save_pretrained(tmp_path)
        weights = tmp_path / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(
            {"truncated": data[: len(data) // 2], "not safetensors": b"<html>" * 50, "empty": b""}[damage]
        )
        with pytest.raises(OSError, match=f"{weights} is not a readable weights file \\(SafetensorError"):
            RespM2DModel.from_pretrained(tmp_path)

    @pytest.mark.parametrize(
        "index, message",
        [
            (b"{not json", "is not valid JSON"),
            (b"\xff\xfe\x00", "is not valid JSON"),
            (b"[]", "is not an index of sharded weights"),
            (b'{"weight_map": 5, "metadata": {}}', "is not an index of sharded weights"),
            (b'{"weight_map": {}, "metadata": {}}', "is not an index of sharded weights"),
            (b'{"weight_map": {"cls_token": 3}, "metadata": {}}', "is not an index of sharded weights"),
            (b'{"weight_map": {"cls_token": "model-00001-of-00004.safetensors"}}', "is not an index of sharded"),
        ],
    )
    def test_a_damaged_index_of_sharded_weights_is_named(self, tmp_path, index, message):
        classifier = RespM2DForAudioClassification(tiny_config(num_labels=2))
        classifier.save_pretrained(tmp_path, max_shard_size="100KB")
        path = tmp_path / "model.safetensors.index.json"
        loaded = AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True)
        assert torch.equal(loaded.classifier.weight, classifier.classifier.weight)
        path.write_bytes(index)
        for load in (RespM2DModel.from_pretrained, RespM2DForAudioClassification.from_pretrained):
            with pytest.raises(ValueError, match=f"^{path} {message}") as error:
                load(tmp_path)
            assert len(str(error.value).splitlines()) == 1
        with pytest.raises(ValueError, match=f"^{path} {message}"):
            AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True)
        classifier.save_pretrained(tmp_path / "unsharded")
        (tmp_path / "model.safetensors").write_bytes((tmp_path / "unsharded" / "model.safetensors").read_bytes())
        loaded = RespM2DForAudioClassification.from_pretrained(tmp_path)  # Transformers reads the unsharded file
        assert torch.equal(loaded.classifier.weight, classifier.classifier.weight)

    def test_a_path_to_no_folder_is_named_as_such_and_repo_ids_still_go_to_the_hub(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        for missing in ("./resp-m2dd", str(tmp_path / "models" / "resp-m2d"), tmp_path / "nothing", "a/b/c"):
            with pytest.raises(FileNotFoundError, match=f"^{missing}: no such model folder"):
                RespM2DForAudioClassification.from_pretrained(missing)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(OSError) as error:
            RespM2DModel.from_pretrained("org/name")
        assert not isinstance(error.value, FileNotFoundError)

    def test_non_finite_weights_are_refused_with_the_file_and_weight(self, tmp_path):
        from safetensors.torch import load_file, save_file

        tiny_model().save_pretrained(tmp_path)
        weights = tmp_path / "model.safetensors"
        tensors = load_file(weights)
        tensors["encoder.layer.1.attention.qkv.weight"][3, 5] = float("nan")
        tensors["layernorm.bias"][0] = float("inf")
        save_file(tensors, weights, metadata={"format": "pt"})
        bad = "encoder.layer.1.attention.qkv.weight, layernorm.bias"
        message = f"{weights}: weights hold NaN or infinite values \\({bad}\\)"
        with pytest.raises(ValueError, match=message):
            RespM2DModel.from_pretrained(tmp_path)

    def test_weights_that_overflow_the_loading_dtype_are_named_with_it(self, tmp_path):
        from safetensors.torch import load_file, save_file

        tiny_model().save_pretrained(tmp_path)
        tensors = load_file(tmp_path / "model.safetensors")
        tensors["encoder.layer.0.mlp.fc2.weight"][0, 0] = 1e5  # finite in float32, beyond float16's range
        save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
        assert RespM2DModel.from_pretrained(tmp_path).encoder.layer[0].mlp.fc2.weight[0, 0] == 1e5
        message = r"\(encoder.layer.0.mlp.fc2.weight\); in torch.float16 \(the dtype they were loaded in\)"
        with pytest.raises(ValueError, match=message):
            RespM2DModel.from_pretrained(tmp_path, dtype=torch.float16)

    def test_renamed_weights_and_adapters_load_through_transformers(self, tmp_path):
        """`key_mapping` and `load_adapter` (PEFT through Transformers) pass the checks of the loaded weights."""
        from peft import LoraConfig, get_peft_model
        from safetensors.torch import load_file, save_file

        model = tiny_model(seed=3)
        model.save_pretrained(tmp_path / "renamed")
        tensors = load_file(tmp_path / "renamed" / "model.safetensors")
        tensors = {key.replace("layernorm.", "final_norm.", 1): value for key, value in tensors.items()}
        save_file(tensors, tmp_path / "renamed" / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match="missing keys: layernorm.bias, layernorm.weight"):
            RespM2DModel.from_pretrained(tmp_path / "renamed")
        renamed = RespM2DModel.from_pretrained(tmp_path / "renamed", key_mapping={r"^final_norm\.": "layernorm."})
        assert torch.equal(renamed.layernorm.weight, model.layernorm.weight)

        torch.manual_seed(0)
        classifier = RespM2DForAudioClassification(tiny_config(num_labels=2)).eval()
        classifier.save_pretrained(tmp_path / "classifier")
        peft_model = get_peft_model(classifier, LoraConfig(r=2, target_modules=["qkv"], init_lora_weights=False))
        peft_model.save_pretrained(tmp_path / "adapter")
        features = torch.randn(1, 80, 100)
        with torch.no_grad():
            expected = peft_model(input_features=features).logits
        base = RespM2DForAudioClassification.from_pretrained(tmp_path / "classifier")
        base.load_adapter(str(tmp_path / "adapter"))
        with torch.no_grad():
            torch.testing.assert_close(base.eval()(input_features=features).logits, expected)

    def test_pytorch_bin_weights_load_only_as_plain_tensors(self, tmp_path):
        """Sharded safetensors and weights-only `pytorch_model.bin` load; a .bin whose unpickling runs code does not."""
        model = tiny_model(seed=2)
        model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
        assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
        sharded = RespM2DModel.from_pretrained(tmp_path / "sharded")
        assert all(torch.equal(value, sharded.state_dict()[key]) for key, value in model.state_dict().items())
        folder = tmp_path / "bin"
        model.save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        loaded = RespM2DModel.from_pretrained(folder)
        assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())
        torch.save({**model.state_dict(), "payload": RunsCode()}, folder / "pytorch_model.bin")
        with pytest.raises(OSError, match=f"{folder / 'pytorch_model.bin'} is not a readable weights file"):
            RespM2DModel.from_pretrained(folder)
        assert not (tmp_path / "executed").exists()

    def test_from_pretrained_without_a_folder_initializes_the_weights_it_is_not_given(self, tester):
        """`from_pretrained(None, config=..., state_dict=...)` (no config.json to disagree with) as in Transformers."""
        model = tiny_model(seed=4)
        given = {key: value for key, value in model.state_dict().items() if not key.startswith("encoder.layer.1.")}
        torch.manual_seed(0)
        loaded, info = RespM2DModel.from_pretrained(
            None, config=tester.config, state_dict=given, output_loading_info=True
        )
        assert {key for key in info["missing_keys"]} == set(model.state_dict()) - set(given)
        restored = loaded.state_dict()
        assert all(torch.equal(restored[key], value) for key, value in given.items())
        qkv = restored["encoder.layer.1.attention.qkv.weight"]
        assert 0.01 < qkv.std() < 0.03 and not torch.equal(qkv, model.encoder.layer[1].attention.qkv.weight)

    def test_device_map_loading(self, tmp_path):
        model = tiny_model(seed=6)
        model.save_pretrained(tmp_path)
        loaded = RespM2DModel.from_pretrained(tmp_path, device_map="cpu", dtype=torch.bfloat16)
        assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
        assert torch.equal(loaded.embeddings.cls_token, model.embeddings.cls_token.to(torch.bfloat16))

    def test_pooling_modes(self):
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

    def test_chunks_per_pass_bounds_the_encoder_batch_with_the_same_results(self):
        features = torch.randn(2, 80, 96 * 9 + 40)
        mask = torch.ones(2, 96 * 9 + 40, dtype=torch.long)
        mask[1, 300:] = 0
        outputs, sizes = {}, {}
        for per_pass in (None, 2):
            model = tiny_model(chunks_per_pass=per_pass)
            sizes[per_pass] = []
            model.encoder.layer[0].register_forward_hook(lambda m, args, out, s=sizes[per_pass]: s.append(len(args[0])))
            with torch.no_grad():
                outputs[per_pass] = model(features, attention_mask=mask)
        assert (
            sizes[None] == [12, 1, 1] and max(sizes[2]) == 2 and sum(sizes[2]) == 14
        )  # widths 6, 3 (clip 0), 5 (clip 1)
        torch.testing.assert_close(outputs[2].last_hidden_state, outputs[None].last_hidden_state, atol=1e-6, rtol=0)
        torch.testing.assert_close(outputs[2].pooler_output, outputs[None].pooler_output, atol=1e-6, rtol=0)

    def test_gradients_reach_the_returned_hidden_states_and_attentions(self):
        model = tiny_model().train()
        features, mask = torch.randn(2, 80, 150), torch.ones(2, 150, dtype=torch.long)
        mask[1, 70:] = 0
        output = model(features, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        for tensor in output.hidden_states + output.attentions:
            tensor.retain_grad()
        output.pooler_output.square().sum().backward()
        for tensor in output.hidden_states + output.attentions:
            assert tensor.grad is not None and tensor.grad.abs().sum() > 0
        model.zero_grad()
        model(features, output_hidden_states=True).hidden_states[1].sum().backward()  # backprop from a returned state
        assert model.encoder.layer[0].mlp.fc2.weight.grad.abs().sum() > 0
        assert (
            model.encoder.layer[1].mlp.fc2.weight.grad is None or not model.encoder.layer[1].mlp.fc2.weight.grad.any()
        )

    def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_gradients(self):
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
    def test_half_precision_runs_close_to_float32(self, dtype):
        model = tiny_model()
        features = torch.randn(2, 80, 150)
        with torch.no_grad():
            reference = model(features).pooler_output
            half = model.to(dtype)(features).pooler_output
        assert half.dtype == dtype
        assert torch.nn.functional.cosine_similarity(half.float(), reference).min() > 0.99

    def test_eager_attention_gives_the_sdpa_result(self, tmp_path, monkeypatch):
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

    @pytest.mark.parametrize("padding", [slice(100, None), slice(None, 50)])
    def test_padding_without_an_attention_mask_warns_once(self, padding):
        from transformers.testing_utils import CaptureLogger

        from resp_hf.models.resp_m2d import modeling_resp_m2d

        model = tiny_model()
        padded = torch.randn(2, 80, 150)
        padded[1, :, padding] = 0.0
        type(modeling_resp_m2d.logger).warning_once.cache_clear()
        with CaptureLogger(modeling_resp_m2d.logger) as quiet:
            model(padded, attention_mask=(padded.abs().sum(1) > 0).long())  # mask given
            model(torch.randn(2, 80, 150))  # no padding
            model(torch.zeros(2, 80, 150))  # silence everywhere is not padding
        assert quiet.out == ""
        with CaptureLogger(modeling_resp_m2d.logger) as captured:
            model(padded)
            model(padded)
        assert captured.out.count("no attention_mask was passed") == 1

    @pytest.mark.parametrize(
        "features, mask, message",
        [
            (torch.randn(80, 100), None, r"\(batch, 80, frames\)"),
            (torch.randn(1, 64, 100), None, r"\(batch, 80, frames\)"),
            (torch.randn(2, 80, 100), torch.ones(2, 90), "attention_mask must be"),
            (torch.randn(1, 80, 100), torch.zeros(1, 100), r"Clip 0 has no frames"),
            (torch.randn(3, 80, 100), torch.ones(3, 100).index_fill(0, torch.tensor([0, 2]), 0), r"Clips 0, 2 have no"),
            (torch.randn(2, 80, 0), None, "no frames"),
            (torch.randn(1, 80, 100), (torch.arange(100)[None] % 40) < 20, "row 0 marks frames in more than one"),
            (torch.randn(2, 80, 6), torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]]), "row 1 marks frames in"),
            (torch.randn(1, 80, 100), torch.full((1, 100), 2), "must hold only 0 and 1, found 2"),
            (torch.randn(1, 80, 100), torch.full((1, 100), 0.5), "must hold only 0 and 1, found 0.5"),
        ],
    )
    def test_bad_model_inputs_are_clear_errors(self, features, mask, message):
        with pytest.raises(ValueError, match=message):
            tiny_model()(features, attention_mask=mask)


class TestRespM2DConfig:
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
            ({"classifier_layer": 12}, r"a layer 0..11 \(-12..-1 from the end\)"),
            ({"classifier_layer": -13}, "classifier_layer=-13"),
            ({"chunks_per_pass": 0}, "chunks_per_pass=0 must be a positive integer or None"),
            ({"hidden_size": "768"}, r"Invalid settings: hidden_size='768' \(an integer >= 1\)"),
            ({"hidden_size": 0}, r"hidden_size=0 \(an integer >= 1\)"),
            ({"intermediate_size": 0}, r"intermediate_size=0 \(an integer >= 1\)"),
            (
                {"sampling_rate": -16000, "n_fft": 400, "win_length": 400, "hop_length": 160, "f_min": 0, "f_max": 1},
                r"sampling_rate=-16000 \(an integer >= 1\)",
            ),
            ({"patch_size": (0, 16)}, r"patch_size=\[0, 16\] must be two positive integers"),
            ({"patch_size": (16, -16)}, r"patch_size=\[16, -16\] must be two positive integers"),
            ({"input_size": (-80, 608)}, r"input_size=\[-80, 608\] must be two positive integers"),
            ({"input_size": 80}, r"input_size=80 must be two positive integers"),
            ({"input_size": (80, 608, 1)}, r"input_size=\[80, 608, 1\] must be two positive integers"),
            ({"norm_std": "abc"}, r"norm_std='abc' must be a number"),
            ({"layer_norm_eps": -1e-6}, r"layer_norm_eps=-1e-06 must be a positive number"),
            ({"hidden_dropout_prob": 2}, r"hidden_dropout_prob=2 must be a probability in \[0, 1\]"),
            ({"attention_probs_dropout_prob": -0.1}, r"attention_probs_dropout_prob=-0.1 must be a probability"),
            ({"dtype": "float33"}, r"dtype='float33' is not a torch dtype"),
            ({"num_attention_heads": 0}, r"num_attention_heads=0 \(an integer >= 1\)"),
            ({"num_hidden_layers": True}, "num_hidden_layers=True"),
            ({"num_hidden_layers": 1_000_000}, "num_hidden_layers=1000000 is more than 1000 blocks"),
            ({"intermediate_size": 3072.0}, "intermediate_size=3072.0"),
            ({"hop_length": 0, "n_fft": 400.5}, r"n_fft=400.5 \(an integer >= 1\), hop_length=0"),
            ({"hidden_act": "nope"}, r"hidden_act='nope' is not one of Transformers' activations"),
            ({"hidden_act": None}, "hidden_act=None"),
            ({"qkv_bias": "no"}, "qkv_bias='no' must be true or false"),
            ({"freeze_encoder": "false", "qkv_bias": 1}, "qkv_bias=1, freeze_encoder='false' must be true or false"),
            ({"id2label": ["a", "b"]}, "id2label must map class ids to label names, got a list"),
            (
                {"id2label": {"x": "a", "y": "b"}},
                r"id2label must map the class ids 0..1 \(integers or integer strings\) to names, "
                r"got unexpected keys 'x', 'y' and missing ids 0, 1\.$",
            ),
            ({"id2label": {0: "a", "5": "b"}}, r"0..1 .* got unexpected keys '5' and missing ids 1\.$"),
            ({"num_mel_bins": 64}, r"num_mel_bins cannot be set: derived from the other settings"),
        ],
    )
    def test_bad_configs_are_clear_errors(self, overrides, message):
        with pytest.raises(ValueError, match=message) as error:
            RespM2DConfig(**overrides)
        assert len(str(error.value).splitlines()) == 1

    def test_integral_floats_and_numpy_numbers_are_read_as_python_numbers(self):
        config = RespM2DConfig(sampling_rate=16000.0, input_size=np.array([80, 608]), norm_mean=np.float32(-5.5))
        assert (config.sampling_rate, config.input_size, config.norm_mean) == (16000, [80, 608], -5.5)
        assert type(config.sampling_rate) is int and type(config.input_size[0]) is int
        assert type(config.norm_mean) is float

    def test_a_saved_config_edited_into_nonsense_is_refused_on_loading(self, tmp_path):
        tiny_model().save_pretrained(tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps(config | {"num_attention_heads": 0}))
        with pytest.raises(ValueError, match=r"num_attention_heads=0 \(an integer >= 1\)"):
            RespM2DModel.from_pretrained(tmp_path)

    @pytest.mark.parametrize("payload, kind", [([1, 2], "list"), (3, "int"), ("settings", "str")])
    def test_a_config_json_that_is_not_an_object_is_refused_naming_the_file(self, tmp_path, payload, kind):
        tiny_model().save_pretrained(tmp_path)
        (tmp_path / "config.json").write_text(json.dumps(payload))
        for load in (RespM2DModel.from_pretrained, RespM2DConfig.from_pretrained):
            with pytest.raises(
                ValueError, match=f"config.json must hold one JSON object of settings, not a {kind}"
            ) as error:
                load(tmp_path)
            assert str(tmp_path / "config.json") in str(error.value) and len(str(error.value).splitlines()) == 1

    @pytest.mark.parametrize(
        "edit, message",
        [
            ({"freeze_encoder": "false"}, "freeze_encoder='false' must be true or false"),
            ({"qkv_bias": "no"}, "qkv_bias='no' must be true or false"),
            ({"id2label": {"x": "a", "y": "b"}}, "got unexpected keys 'x', 'y' and missing ids 0, 1"),
            ({"id2label": {"0": "a", "5": "b"}}, "got unexpected keys '5' and missing ids 1"),
            ({"num_mel_bins": 64}, "num_mel_bins cannot be set"),
        ],
    )
    def test_bad_booleans_and_label_ids_in_a_saved_config_are_refused_on_loading(self, tmp_path, edit, message):
        """config.json's "false" is a truthy string, and label ids with gaps fail in the pipeline (KeyError)."""

        RespM2DForAudioClassification(tiny_config(num_labels=2)).save_pretrained(tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps(config | edit))
        with pytest.raises(ValueError, match=message) as error:
            RespM2DForAudioClassification.from_pretrained(tmp_path)
        assert len(str(error.value).splitlines()) == 1

    def test_bad_booleans_and_label_ids_given_to_from_pretrained_are_refused(self, tmp_path):

        tiny_model().save_pretrained(tmp_path)
        with pytest.raises(ValueError, match="freeze_encoder='false' must be true or false"):
            RespM2DForAudioClassification.from_pretrained(tmp_path, freeze_encoder="false")
        with pytest.raises(ValueError, match="got unexpected keys 5 and missing ids 1"):
            RespM2DForAudioClassification.from_pretrained(tmp_path, id2label={0: "a", 5: "b"})

    def test_label_ids_as_json_strings_and_a_null_auto_map_load(self, tmp_path):

        RespM2DForAudioClassification(tiny_config(id2label={"0": "wheeze", "1": "crackle"})).save_pretrained(tmp_path)
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps(config | {"auto_map": None}))
        loaded = RespM2DForAudioClassification.from_pretrained(tmp_path)
        assert loaded.config.id2label == {0: "wheeze", 1: "crackle"}
        assert loaded.config.auto_map["AutoModel"] == "modeling_resp_m2d.RespM2DModel"

    def test_config_describes_vit_base_frequency_embeddings(self):
        config = RespM2DConfig()
        assert config.num_frequency_patches == 5 and config.time_patches_per_chunk == 38
        assert config.frame_embedding_size == config.pooled_size == 3840
        assert RespM2DConfig(pooling="mean").pooled_size == 768
        long_unit = RespM2DConfig(input_size=(80, 1001))
        assert long_unit.time_patches_per_chunk == 62
        assert tiny_config(patch_size=(80, 4), input_size=(80, 40)).frame_embedding_size == 64


# Exactness against independent transcriptions of the original M2D runtime (nttcslab/m2d).


def original_block(layer, x, heads):
    """timm's ViT Block as the original runs it: x + attn(norm1(x)), then x + mlp(norm2(x))."""
    attention, mlp = layer.attention, layer.mlp
    B, N, C = x.shape
    h = F.layer_norm(x, (C,), layer.layernorm_before.weight, layer.layernorm_before.bias, eps=1e-6)
    qkv = F.linear(h, attention.qkv.weight, attention.qkv.bias)
    qkv = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), attention.proj.weight, attention.proj.bias)
    h = F.layer_norm(x, (C,), layer.layernorm_after.weight, layer.layernorm_after.bias, eps=1e-6)
    return x + F.linear(F.gelu(F.linear(h, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)


def original_forward_encoder(model, x):
    """nttcslab/m2d patch_m2d.diff `forward_encoder(x, mask_ratio=0, return_layers=True, adjust_short=True)`."""
    config = model.config
    fbins = config.input_size[0] // config.patch_size[0]
    projection = model.embeddings.patch_embeddings.projection  # patch_embed.proj
    x = F.conv2d(x, projection.weight, projection.bias, stride=config.patch_size)
    x = x.flatten(2).transpose(1, 2)
    pos_embed = model.embeddings.position_embeddings[:, 1:, :]
    if x.shape[1] < pos_embed.shape[1]:  # shorten pos_embed for a short input
        dims = pos_embed.shape[-1]
        frames = x.shape[1] // fbins
        pos_embed = pos_embed.reshape(1, fbins, -1, dims)[:, :, :frames, :].reshape(1, fbins * frames, dims)
    x = x + pos_embed
    cls_token = model.embeddings.cls_token + model.embeddings.position_embeddings[:, :1, :]
    x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    layers = []
    for layer in model.encoder.layer:
        x = original_block(layer, x, config.num_attention_heads)
        layers.append(x)
    x = F.layer_norm(x, (x.shape[-1],), model.layernorm.weight, model.layernorm.bias, eps=1e-6)
    layers.pop()  # replace the last feature with the normalized one
    layers.append(x)
    return torch.stack(layers)


def original_encode_lms(model, lms, encoder=original_forward_encoder):
    """
    nttcslab/m2d m2d/runtime_audio.py `encode_lms(x, return_layers=True)` for one clip (n_mels, T): pad
    `(p - T % unit % p) % p` frames at the end, encode every `unit` frames, stack the frequency bands per time step.
    Returns (layers, time steps, F * hidden) in the original's layer numbering.
    """
    config = model.config
    patch_fbins, unit_frames, patch_frames = (
        config.input_size[0] // config.patch_size[0],
        config.input_size[1],
        config.patch_size[1],
    )
    embed_d = config.hidden_size
    x = lms[None, None]
    chunks = (x.shape[-1] + unit_frames - 1) // unit_frames
    pad_frames = (patch_frames - (x.shape[-1] % unit_frames % patch_frames)) % patch_frames
    if pad_frames > 0:
        x = F.pad(x, (0, pad_frames))
    embeddings = []
    for i in range(chunks):
        emb = encoder(model, x[..., i * unit_frames : (i + 1) * unit_frames])[:, :, 1:, :]
        # 'L b (f t) d -> L b t (f d)'
        emb = emb.reshape(emb.shape[0], 1, patch_fbins, -1, embed_d).permute(0, 1, 3, 2, 4).flatten(3)
        embeddings.append(emb)
    return torch.cat(embeddings, dim=-2)[:, 0]


@pytest.mark.parametrize(
    "input_size, patch_size",
    [((80, 1001), (16, 16)), ((80, 200), (16, 4)), ((80, 608), (16, 16)), ((64, 100), (16, 8))],
)
def test_every_length_up_to_four_units_matches_the_original_runtime(input_size, patch_size):
    """All lengths 1..4 units, as prefixes of one log-mel, batched with masks against the original loop."""
    model = tiny_model(
        input_size=input_size,
        patch_size=patch_size,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        num_hidden_layers=1,
    )
    unit = input_size[1]
    torch.manual_seed(1)
    lms = torch.randn(input_size[0], 4 * unit)
    cache = {}

    def cached_encoder(model, piece):  # prefixes share their chunks: encode each distinct piece once
        key = piece.numpy().tobytes()
        if key not in cache:
            cache[key] = original_forward_encoder(model, piece)
        return cache[key]

    lengths = list(range(1, 4 * unit + 1))
    with torch.no_grad():
        for start in range(0, len(lengths), 128):
            batch = lengths[start : start + 128]
            mask = (torch.arange(max(batch))[None, :] < torch.tensor(batch)[:, None]).long()
            features = lms[None, :, : max(batch)] * mask[:, None] + 7.0 * (1 - mask[:, None])  # garbage: masked out
            output = model(features, attention_mask=mask)
            for row, length in enumerate(batch):
                expected = original_encode_lms(model, lms[:, :length], cached_encoder)[-1]
                steps = int(output.frame_mask[row].sum())
                assert steps == expected.shape[0], (length, steps, expected.shape)
                torch.testing.assert_close(output.frame_embeddings[row, :steps], expected, atol=1e-5, rtol=0)
                assert torch.all(output.frame_embeddings[row, steps:] == 0)


def test_original_layer_numbers_map_to_the_states_the_original_returns():
    model = tiny_model(num_hidden_layers=3)
    features = torch.randn(1, 80, 150)
    with torch.no_grad():
        output = model(features, output_hidden_states=True)
        expected = original_encode_lms(model, features[0])  # (3 layers, steps, F * hidden)
    for layer in (0, 1, 2, -1, -3):
        states = model.layer_output(output, layer)
        frames = model.stack_frequency_bands(states, output.frame_mask)[0]
        torch.testing.assert_close(frames, expected[layer], atol=1e-5, rtol=0)
    assert model.layer_output(output, 2) is output.last_hidden_state
    assert model.layer_output(output, 0) is output.hidden_states[1]
    with pytest.raises(ValueError, match="Layer 3 does not exist: this encoder has layers 0..2"):
        model.layer_output(output, 3)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        model.layer_output(model(features), 0)


@pytest.mark.golden
class TestRespM2DModelIntegration:
    """The converted golden checkpoint (../shared/golden)."""

    def test_inference_matches_the_original_runtime(self, golden_folder, golden_audio, golden_expected):
        """Each golden clip in one padded batch against the original runtime's outputs (as test_convert's parity)."""
        model = RespM2DModel.from_pretrained(golden_folder).eval()
        extractor = RespM2DFeatureExtractor.from_pretrained(golden_folder)
        with torch.no_grad():
            output = model(**extractor(list(golden_audio.values()), sampling_rate=16000))
        for row, name in enumerate(golden_audio):
            frames = torch.from_numpy(golden_expected[f"{name}/frame_embeddings"])
            assert int(output.frame_mask[row].sum()) == len(frames)
            torch.testing.assert_close(output.frame_embeddings[row, : len(frames)], frames, atol=1e-3, rtol=0)
            clip = torch.from_numpy(golden_expected[f"{name}/clip_embedding"])
            torch.testing.assert_close(output.pooler_output[row], clip, atol=1e-3, rtol=0)

    def test_golden_batch_equals_each_clip_alone(self, golden_folder, golden_audio):
        model = RespM2DModel.from_pretrained(golden_folder).eval()
        extractor = RespM2DFeatureExtractor.from_pretrained(golden_folder)
        names = list(golden_audio)
        with torch.no_grad():
            batch = model(**extractor([golden_audio[name] for name in names], sampling_rate=16000))
            for row, name in enumerate(names):
                alone = model(**extractor(golden_audio[name], sampling_rate=16000))
                steps = alone.frame_embeddings.shape[1]
                assert int(batch.frame_mask[row].sum()) == steps == int(alone.frame_mask.sum())
                torch.testing.assert_close(
                    batch.frame_embeddings[row, :steps], alone.frame_embeddings[0], atol=1e-4, rtol=0
                )
                torch.testing.assert_close(batch.pooler_output[row], alone.pooler_output[0], atol=1e-4, rtol=0)


# embed(): clips of any kind in, clip embeddings out.


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
