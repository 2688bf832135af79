import pytest
import torch
from conftest import tiny_config
from peft import PeftModel

from resp_hf import RespM2DForAudioClassification, quantize
from resp_hf.lora import add_lora
from resp_hf.quantize import packs_weights


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    return RespM2DForAudioClassification(tiny_config(num_labels=2))


def test_lora_trains_saves_and_reloads_adapters(tmp_path):
    model = add_lora(tiny_classifier(), rank=4)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("attention.qkv.lora_A" in n for n in names) and any("mlp.fc2.lora_B" in n for n in names)
    assert any("attention.proj.lora_A" in n for n in names) and any("mlp.fc1.lora_A" in n for n in names)
    assert not any("lora" not in n and "classifier" not in n for n in names)  # encoder weights frozen
    frozen = model.base_model.model.resp_m2d.encoder.layer[0].attention.qkv.base_layer.weight.clone()
    torch.manual_seed(1)
    features, labels = torch.randn(8, 80, 150), torch.tensor([0, 1] * 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_features=features, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(model.base_model.model.resp_m2d.encoder.layer[0].attention.qkv.base_layer.weight, frozen)
    model.eval()
    with torch.no_grad():
        expected = model(input_features=features).logits
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny_classifier(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_features=features).logits, expected, atol=1e-5, rtol=0)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(input_features=features).logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_bad_lora_rank_is_a_clear_error(rank):
    with pytest.raises(ValueError, match="LoRA rank must be a positive integer"):
        add_lora(tiny_classifier(), rank=rank)


def test_lora_on_a_quantized_copy_is_refused_naming_a_quantized_layer():
    with pytest.raises(
        ValueError, match=r"quantize\(\) copy for inference \(resp_m2d\.encoder\.layer\.0\.attention\.qkv is"
    ):
        add_lora(quantize(tiny_classifier(), "int8"), rank=4)
    packed = quantize(tiny_classifier(), "fp32")  # GELU and query scaling folded into its packed layers
    if packs_weights(torch.float32):
        with pytest.raises(ValueError, match="add LoRA to the model itself and quantize after training"):
            add_lora(packed, rank=4)
    else:  # nothing packed: a plain float32 copy takes adapters
        assert any("lora_A" in name for name, _ in add_lora(packed, rank=4).named_parameters())
