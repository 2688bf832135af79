import pytest
import torch
from conftest import tiny_model
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from resp_hf import RespM2DModel
from resp_hf.models.resp_m2d import modeling_resp_m2d


def padded_batch():
    torch.manual_seed(0)
    features, mask = torch.randn(2, 80, 150), torch.ones(2, 150, dtype=torch.long)
    mask[1, 60:] = 0
    return features, mask


def count_calls(monkeypatch, name):
    """Counts calls of one attention implementation as the model looks it up (eager: the module's function)."""
    calls = []
    if name == "eager":
        original = modeling_resp_m2d.eager_attention_forward
        spy = lambda *a, **k: calls.append(1) or original(*a, **k)  # noqa: E731
        monkeypatch.setattr(modeling_resp_m2d, "eager_attention_forward", spy)
    else:
        original = ALL_ATTENTION_FUNCTIONS[name]
        spy = lambda *a, **k: calls.append(1) or original(*a, **k)  # noqa: E731
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, name, spy)
    return calls


def test_golden_eager_and_sdpa_loaded_separately_agree(golden_folder, golden_audio, monkeypatch):
    from resp_hf import RespM2DFeatureExtractor

    inputs = RespM2DFeatureExtractor.from_pretrained(golden_folder)(list(golden_audio.values()), sampling_rate=16000)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = RespM2DModel.from_pretrained(golden_folder, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        calls = count_calls(monkeypatch, implementation)
        with torch.no_grad():
            outputs[implementation] = model(**inputs)
        assert calls, f"{implementation} was not used"
        monkeypatch.undo()
    for key in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(outputs["eager"][key], outputs["sdpa"][key], atol=1e-4, rtol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_set_attn_implementation_switches_the_function(implementation, monkeypatch):
    model = tiny_model()
    model.set_attn_implementation("sdpa" if implementation == "eager" else "eager")
    model.set_attn_implementation(implementation)
    calls = count_calls(monkeypatch, implementation)
    features, mask = padded_batch()
    with torch.no_grad():
        model(features, attention_mask=mask)
    assert len(calls) == model.config.num_hidden_layers * 2  # two groups: full chunks, then the short ones


def test_flex_attention_gets_an_additive_mask_it_can_use(monkeypatch):
    """flex_attention crashes on this CPU-only torch, so check the call it gets: same result through SDPA."""
    received = []

    def flex_stand_in(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        received.append(attention_mask)
        assert attention_mask is None or attention_mask.shape == (query.shape[0], 1, query.shape[2], key.shape[2])
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)

    model = tiny_model()
    features, mask = padded_batch()
    with torch.no_grad():
        reference = model(features, attention_mask=mask, output_hidden_states=True).last_hidden_state
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flex_attention", flex_stand_in)
        model.set_attn_implementation("flex_attention")
        flex = model(features, attention_mask=mask, output_hidden_states=True).last_hidden_state
    assert model.config._attn_implementation == "flex_attention" and received
    assert all(m.is_floating_point() for m in received if m is not None)
    torch.testing.assert_close(flex, reference, atol=1e-5, rtol=0)


def test_a_registered_attention_function_is_used(monkeypatch):
    calls = []

    def custom(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("resp_test_attention", custom)
    model = tiny_model()
    model.set_attn_implementation("resp_test_attention")
    features, mask = padded_batch()
    with torch.no_grad():
        model(features, attention_mask=mask)
    assert calls and all(len(shape) == 4 and shape[1] == model.config.num_attention_heads for shape in calls)


def test_attention_probabilities_come_from_eager_under_sdpa_too():
    model = tiny_model()
    features, mask = padded_batch()
    with torch.no_grad():
        output = model(features, attention_mask=mask, output_attentions=True)
    attention = output.attentions[0]
    tokens = output.last_hidden_state.shape[2]
    assert attention.shape == (2, 2, 4, tokens, tokens)
    # Clip 1 (60 frames, 4 columns of 6): keys of the padded columns get exactly zero weight.
    keys = torch.arange(tokens - 1) % model.config.time_patches_per_chunk
    assert torch.all(attention[1, 0][..., 1:][..., keys >= 4] == 0)
    torch.testing.assert_close(attention[0, 0].sum(-1), torch.ones(4, tokens))


def timm_written_out_attention(attention, hidden_states):
    """timm's `Attention.forward` without fused attention, transcribed: queries scaled first, softmax in their dtype."""
    batch, tokens, width = hidden_states.shape
    heads = attention.num_heads
    qkv = attention.qkv(hidden_states).reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q = q * (width // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(batch, tokens, width)
    return attention.proj(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_attention_computes_as_the_original_to_the_bit(dtype):
    """Head width 32: its scale is not a power of two, so scaling the scores instead of the queries would show."""
    model = tiny_model(num_attention_heads=2).to(dtype)
    model.set_attn_implementation("eager")
    attention = model.encoder.layer[0].attention
    torch.manual_seed(1)
    hidden_states = torch.randn(3, 21, model.config.hidden_size).to(dtype)
    with torch.no_grad():
        output, probs = attention(hidden_states)
        expected = timm_written_out_attention(attention, hidden_states)
    assert output.dtype == probs.dtype == dtype
    assert torch.equal(output, expected)
