"""Tests of `RespM2DForAudioClassification`: the original M2D/EVAR head on the tiny config and on the golden encoder."""

import pytest
import torch
from conftest import RespM2DModelTester, noise, tiny_config
from transformers import AutoModel, AutoModelForAudioClassification

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DForAudioClassification, RespM2DModel


def tiny_classifier(seed=0, **overrides):
    torch.manual_seed(seed)
    return RespM2DForAudioClassification(tiny_config(**overrides))


def head_input(model, features, mask):
    """What the classification head receives (the input of its BatchNorm)."""
    captured = {}
    handle = model.head_norm.register_forward_hook(lambda module, args, output: captured.setdefault("x", args[0]))
    with torch.no_grad():
        model(features, attention_mask=mask)
    handle.remove()
    return captured["x"]


class TestRespM2DForAudioClassification:
    """The head of the original M2D/EVAR runtime on the tiny config: losses, what it reads, freezing, loading."""

    tester = RespM2DModelTester(batch_size=4, frames=150, padded_from=70)

    @pytest.mark.parametrize(
        "num_labels, labels, problem_type, expected_loss",
        [
            (
                3,
                torch.tensor([0, 2, 1, 2]),
                "single_label_classification",
                lambda logits, y: torch.nn.functional.cross_entropy(logits, y),
            ),
            (
                3,
                torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]]),
                "multi_label_classification",
                lambda logits, y: torch.nn.functional.binary_cross_entropy_with_logits(logits, y),
            ),
            (
                1,
                torch.tensor([0.5, 1.5, -0.2, 3.0]),
                "regression",
                lambda logits, y: torch.nn.functional.mse_loss(logits[:, 0], y),
            ),
        ],
    )
    def test_problem_types_forward_and_backward(self, num_labels, labels, problem_type, expected_loss):
        model = tiny_classifier(num_labels=num_labels).train()
        features, mask = self.tester.prepare_inputs()
        output = model(features, attention_mask=mask, labels=labels)
        assert model.config.problem_type == problem_type
        assert output.logits.shape == (4, num_labels)
        torch.testing.assert_close(output.loss, expected_loss(output.logits, labels))
        output.loss.backward()
        assert model.classifier.weight.grad.abs().sum() > 0
        assert model.resp_m2d.encoder.layer[0].attention.qkv.weight.grad.abs().sum() > 0

    def test_head_is_a_non_affine_batch_norm_and_linear_layer(self):
        model = tiny_classifier(num_labels=2)
        assert not model.head_norm.affine and model.head_norm.num_features == 320
        assert model.classifier.in_features == 320
        assert model.classifier.weight.std() < 1e-4  # the original head's trunc_normal(std=2e-5)

    def test_default_head_reads_the_frequency_pooled_final_output(self):
        model = tiny_classifier(num_labels=2).eval()
        features, mask = self.tester.prepare_inputs()
        with torch.no_grad():
            expected = model.resp_m2d(features, attention_mask=mask).pooler_output
        torch.testing.assert_close(head_input(model, features, mask), expected)

    @pytest.mark.parametrize("pooling, size", [("frequency", 320), ("mean", 64), ("cls", 64)])
    def test_pooling_option_sets_what_the_head_reads(self, pooling, size):
        model = tiny_classifier(num_labels=2, pooling=pooling).eval()
        features, mask = self.tester.prepare_inputs()
        with torch.no_grad():
            expected = model.resp_m2d(features, attention_mask=mask).pooler_output
        assert expected.shape == (4, size) and model.classifier.in_features == size
        torch.testing.assert_close(head_input(model, features, mask), expected)

    @pytest.mark.parametrize("layer, hidden_index", [(0, 1), (-2, 1), (1, None), (-1, None)])
    def test_classifier_layer_follows_the_original_numbering(self, layer, hidden_index):
        """Two blocks: layer 0 = block 1 before the final LayerNorm, layer 1 = -1 = the final output."""
        model = tiny_classifier(num_labels=2, classifier_layer=layer).eval()
        features, mask = self.tester.prepare_inputs()
        with torch.no_grad():
            outputs = model.resp_m2d(features, attention_mask=mask, output_hidden_states=True)
        states = outputs.last_hidden_state if hidden_index is None else outputs.hidden_states[hidden_index]
        expected = model.resp_m2d.pool(states, outputs.frame_mask)
        torch.testing.assert_close(head_input(model, features, mask), expected)
        assert torch.allclose(expected, outputs.pooler_output) == (hidden_index is None)

    def test_weighted_layers_learn_a_softmax_mixture_of_the_original_layers(self):
        model = tiny_classifier(num_labels=2, classifier_layer="weighted").eval()
        features, mask = self.tester.prepare_inputs()
        with torch.no_grad():
            outputs = model.resp_m2d(features, attention_mask=mask, output_hidden_states=True)
            layers = (outputs.hidden_states[1], outputs.last_hidden_state)
            pooled = [model.resp_m2d.pool(h, outputs.frame_mask) for h in layers]
            torch.testing.assert_close(
                head_input(model, features, mask), (pooled[0] + pooled[1]) / 2
            )  # equal weights at start
            model.layer_weights.copy_(torch.tensor([30.0, 0.0]))
            torch.testing.assert_close(head_input(model, features, mask), pooled[0], atol=1e-5, rtol=0)
        model.train()
        model(features, attention_mask=mask, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        assert model.layer_weights.grad.abs().sum() > 0

    def test_frozen_encoder_trains_only_the_head(self, tmp_path):
        model = tiny_classifier(num_labels=2, freeze_encoder=True).train()
        features, mask = self.tester.prepare_inputs()
        model(features, attention_mask=mask, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        assert all(p.grad is None for p in model.resp_m2d.parameters())
        assert model.classifier.weight.grad is not None
        model.save_pretrained(tmp_path)
        reloaded = RespM2DForAudioClassification.from_pretrained(tmp_path)
        assert reloaded.config.freeze_encoder
        assert not any(p.requires_grad for p in reloaded.resp_m2d.parameters())
        assert all(p.requires_grad for p in reloaded.classifier.parameters())

    def test_new_head_on_a_converted_encoder_and_auto_classes(self, tmp_path):
        torch.manual_seed(0)
        encoder = RespM2DModel(tiny_config()).eval()
        encoder.save_pretrained(tmp_path / "encoder")
        labels = {0: "healthy", 1: "copd", 2: "asthma"}
        classifier = AutoModelForAudioClassification.from_pretrained(
            tmp_path / "encoder", num_labels=3, id2label=labels, label2id={name: i for i, name in labels.items()}
        )
        assert type(classifier) is RespM2DForAudioClassification
        assert classifier.config.id2label == labels and classifier.config.label2id["copd"] == 1
        assert torch.equal(classifier.resp_m2d.embeddings.position_embeddings, encoder.embeddings.position_embeddings)
        classifier.save_pretrained(tmp_path / "classifier")

        features, mask = self.tester.prepare_inputs()
        reloaded = AutoModelForAudioClassification.from_pretrained(tmp_path / "classifier").eval()
        classifier.eval()
        with torch.no_grad():
            assert torch.equal(
                reloaded(features, attention_mask=mask).logits, classifier(features, attention_mask=mask).logits
            )
            encoder_from_classifier = AutoModel.from_pretrained(tmp_path / "classifier").eval()
            assert type(encoder_from_classifier) is RespM2DModel
            torch.testing.assert_close(
                encoder_from_classifier(features, attention_mask=mask).pooler_output,
                encoder(features, attention_mask=mask).pooler_output,
                atol=0,
                rtol=0,
            )

    @pytest.mark.parametrize("layer", [-3, 2, True, "sum", 1.5])
    def test_bad_classifier_layer_is_a_clear_error(self, layer):
        with pytest.raises(ValueError, match="classifier_layer"):
            RespM2DConfig(num_hidden_layers=2, classifier_layer=layer)

    @pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
    def test_any_integer_label_dtype_is_single_label(self, dtype):
        model = tiny_classifier(num_labels=3).train()
        features, mask = self.tester.prepare_inputs()
        labels = torch.tensor([0, 2, 1, 2])
        output = model(features, attention_mask=mask, labels=labels.to(dtype))
        assert model.config.problem_type == "single_label_classification"
        torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))

    def test_from_pretrained_with_loading_info_returns_the_frozen_model_and_the_info(self, tmp_path):
        tiny_classifier(num_labels=2, freeze_encoder=True).save_pretrained(tmp_path)
        model, info = RespM2DForAudioClassification.from_pretrained(tmp_path, output_loading_info=True)
        assert info["missing_keys"] == set() or not info["missing_keys"]
        assert not any(p.requires_grad for p in model.resp_m2d.parameters())

    def test_a_single_clip_trains_with_the_running_statistics(self):
        model = tiny_classifier(num_labels=2).train()
        features, mask = self.tester.prepare_inputs()
        model(features, attention_mask=mask, labels=torch.tensor([0, 1, 1, 0]))  # updates the running statistics
        running = model.head_norm.running_mean.clone()
        output = model(features[:1], attention_mask=mask[:1], labels=torch.tensor([1]))
        output.loss.backward()
        assert torch.equal(model.head_norm.running_mean, running)
        with torch.no_grad():
            expected = model.eval()(features[:1], attention_mask=mask[:1]).logits
        torch.testing.assert_close(output.logits.detach(), expected)

    def test_bad_overrides_in_from_pretrained_are_clear_errors(self, tmp_path):
        tiny_classifier(num_labels=2).save_pretrained(tmp_path)
        with pytest.raises(ValueError, match="pooling='max'"):
            RespM2DForAudioClassification.from_pretrained(tmp_path, pooling="max")
        with pytest.raises(ValueError, match=r"a layer 0..1 \(-2..-1 from the end\)"):
            RespM2DForAudioClassification.from_pretrained(tmp_path, classifier_layer=5)

    def test_a_head_on_the_final_output_stacks_the_frames_once(self, monkeypatch):
        """Hour-long inputs: the head reuses `pooler_output` instead of stacking a second copy of every frame."""
        model = RespM2DForAudioClassification(tiny_config(num_labels=2)).eval()
        stack = model.resp_m2d.stack_frequency_bands
        calls = []
        monkeypatch.setattr(model.resp_m2d, "stack_frequency_bands", lambda *args: calls.append(1) or stack(*args))
        extractor = RespM2DFeatureExtractor.from_model_config(model.config)
        inputs = extractor([noise(2.0), noise(0.8, seed=1)], sampling_rate=16000)
        with torch.no_grad():
            logits = model(**inputs).logits
            encoder = model.resp_m2d(**inputs)
        assert len(calls) == 2  # one for the classifier's forward, one for the encoder call above
        torch.testing.assert_close(logits, model.classifier(model.head_norm(encoder.pooler_output)))


@pytest.mark.golden
class TestRespM2DForAudioClassificationIntegration:
    """A new head on the converted golden encoder (../shared/golden)."""

    def test_a_new_head_reads_the_golden_clip_embeddings_and_keeps_the_encoder(self, golden_folder, golden_audio):
        encoder = RespM2DModel.from_pretrained(golden_folder).eval()
        model = RespM2DForAudioClassification.from_pretrained(golden_folder, num_labels=3).eval()
        assert all(torch.equal(value, model.resp_m2d.state_dict()[key]) for key, value in encoder.state_dict().items())
        extractor = RespM2DFeatureExtractor.from_pretrained(golden_folder)
        inputs = extractor(list(golden_audio.values()), sampling_rate=16000)
        with torch.no_grad():
            expected = encoder(**inputs).pooler_output
            logits = model(**inputs).logits
        assert logits.shape == (len(golden_audio), 3)
        torch.testing.assert_close(head_input(model, inputs["input_features"], inputs["attention_mask"]), expected)
        torch.testing.assert_close(logits, model.classifier(model.head_norm(expected)))
