"""LoRA adapters (PEFT) on the attention and MLP projections of a resp_m2d encoder or classifier."""

from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from .models.resp_m2d import RespM2DForAudioClassification
from .quantize import PackedLinear

# The fused query/key/value and output projections of attention, and the two MLP layers of every block.
LORA_TARGET_MODULES = ("qkv", "proj", "fc1", "fc2")
# The layers of resp_hf.quantize() copies: packed (GELU and query scaling folded in) and dynamic int8.
QUANTIZED_LINEARS = (PackedLinear, DynamicInt8Linear)


def add_lora(
    model, rank: int = 8, alpha: float | None = None, dropout: float = 0.0, target_modules=LORA_TARGET_MODULES
):
    """
    Wraps `model` with LoRA adapters of rank `rank` (scale `alpha / rank`, `alpha` defaulting to `2 * rank`) on
    `target_modules` of every block, via `peft.get_peft_model`. The encoder's own weights are frozen; a
    classifier's head (linear layer and BatchNorm statistics) trains fully and is saved with the adapters, so
    `PeftModel.from_pretrained(base_model, adapter_folder)` restores the fine-tuned model.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("LoRA needs peft: pip install 'resp-hf[peft]'.") from None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}.")
    quantized = next((name for name, module in model.named_modules() if isinstance(module, QUANTIZED_LINEARS)), None)
    if quantized is not None:
        raise ValueError(
            f"{type(model).__name__} is a resp_hf.quantize() copy for inference ({quantized} is quantized): "
            "add LoRA to the model itself and quantize after training."
        )
    is_classifier = isinstance(model, RespM2DForAudioClassification)
    if is_classifier and model.layer_weights is not None:
        raise ValueError("LoRA with classifier_layer='weighted' is not supported: choose one layer.")
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=["classifier", "head_norm"] if is_classifier else None,
    )
    return get_peft_model(model, config)
