"""
Faster inference: `quantize(model, "int8")` returns a copy of a RespM2D model whose encoder Linear layers (attention
qkv and output projection, MLP fc1 and fc2: all but a few percent of the FLOPs) run in int8 (CPU);
`quantize(model, "bf16")` returns a copy with all weights in bfloat16 (CPU or GPU); `quantize(model, "fp32")` returns a
float32 copy whose encoder Linear layers are `PackedLinear`s (CPU).

fp32: the same float32 weights, each multiplied through a copy packed once into oneDNN's blocked layout, and the MLP's
GELU applied inside fc1's kernel, instead of PyTorch's default float32 Linear (MKL's GEMM on the plain weight, then a
separate GELU pass). Only the summation order changes: embeddings within 1e-6 of the float32 model on ViT-Base. The
packed copies take another 340 MB for ViT-Base, beside the copy's own weights. On a noisy AMD EPYC (Zen 3, AVX2) it ran
1.16-1.27x faster than the float32 model at batch 1 and 1.03-1.24x at batch 8 (ViT-Base, 10-s clips, medians of
interleaved rounds in three measurements); a profile at batch 8 put the products at 3.79 s against MKL's 4.31 s, with
the GELU pass and the input copies gone.

bf16: the copy is `model.to(torch.bfloat16)`, on a CPU with the written-out ("eager") attention. Feature extraction
stays float32 and the patch embedding casts its input to the weights' dtype, so `forward`, `embed()` (float32
embeddings) and the pipelines work unchanged; LayerNorm, softmax and reductions accumulate in float32 inside their bf16
kernels. Why not `torch.autocast`: autocast keeps float32 weights and casts every Linear weight to bf16 on every call
(0.5 GB of memory traffic per ViT-Base forward, a large share of a batch-1 forward), converts activations back and forth
around each Linear and runs the residual adds in float32; bf16 weights do none of that (1.4x autocast at batch 1 and
1.2x at batch 8, measured interleaved on the CI-class CPU; benchmarks/speed.py measures both). Why eager attention on a
CPU: PyTorch's CPU flash attention (SDPA) in bf16 ran at about a third of the bf16 matmul rate, slower than in float32,
on that CPU (AVX-512 BF16, no AMX); the written-out attention (queries scaled first, softmax in bf16, so no float32
copy of the scores) made the whole bf16 model 1.05x faster at batch 1 and 1.06x at batch 8 with the same accuracy.
Where PyTorch has oneDNN's bf16 kernels for the CPU (AVX-512 BF16 or AMX), every encoder Linear
becomes a `PackedLinear`: it multiplies with a copy of its weight packed once into oneDNN's blocked layout instead of
the plain weight on every call, and fc1 applies the MLP's exact GELU inside the same kernel (1.15x at batch 1 and
1.05-1.1x at batch 8 over plain bf16 Linear layers; the products are the same to the bit, fc1's output is rounded once
instead of twice; the packed copies take another 170 MB for ViT-Base). Embeddings stay within cosine 0.99998 of float32
on ViT-Base and the golden clips. Both packed copies (bf16 and fp32) also fold attention's query scaling into the
packed qkv weight and bias where it is a power of two (head width 64: 1/8), so the queries come out of the product
already scaled, to the bit, instead of taking a separate pass over a strided tensor (1-3% of a bf16 forward at batch 1,
median of 30 interleaved rounds). On x86 CPUs without bf16 instructions (AVX-512 BF16 or AMX) PyTorch and oneDNN
emulate bf16 in float32 arithmetic: ViT-Base ran 2.8x (batch 1) to 3.4x (batch 8) slower than float32 on an AVX-512 CPU
without them (Intel Skylake-SP) and about 100x slower on an AVX2 one (AMD Zen 3), so `quantize` warns there.

Dynamic quantization: the weights are quantized once, per output channel (symmetric int8); each Linear's input is
quantized at run time from its own range (asymmetric uint8, one scale per input tensor), multiplied in int32 by
FBGEMM's VNNI kernels and dequantized to float32 (without VNNI, FBGEMM's AVX-512 or AVX2 kernels still lead float32:
1.2x at batch 1 and 1.3x at batch 8 on a Skylake-SP, 1.9x and 1.5x on a Zen 3). Nothing needs calibration data. The
patch embedding, LayerNorms, attention softmax, pooling and any classification head stay in float32.

Why PyTorch's dynamic quantization (`torch.ao.quantization.quantize_dynamic`): measured interleaved on the CI-class
CPU (2 threads, AVX-512 VNNI; ViT-Base, 10-s clips end to end) it ran at 3.1-3.3x fp32 at batch 1 and 2.4-2.6x at
batch 8, ahead of ONNX Runtime's dynamic int8 graph (2.4-2.5x), while leaving the model a PyTorch module, so
`forward`, `embed()`, hidden states, attention masks and the pipeline work unchanged (ONNX Runtime needs an exported
graph). Per-token activation scales are more accurate (cosine to fp32 0.9998 instead of 0.9996 over 12 random
layers) but ran slower than fp32 here: torchao's `Int8DynamicActivationInt8WeightConfig` at 0.7x and `torch._int_mm`
with per-token scales at 0.6-0.8x. One scale per input tensor means a clip's int8 embedding shifts slightly with its
batch companions (cosine 0.9997 or closer on the golden clips); one clip at a time is exactly reproducible.

Quantized models cannot be saved: quantize after loading (`quantize(RespM2DModel.from_pretrained(folder), "int8")`).
"""

import copy
import functools
import math
import platform
import types
import warnings

import torch
from torch import nn
from transformers import PreTrainedModel

METHODS = ("int8", "bf16", "fp32")
# Engines whose dynamic int8 Linear is FBGEMM's (VNNI / AVX2 kernels); "x86" is PyTorch's default on x86 CPUs.
ENGINES = ("x86", "fbgemm")
# oneDNN's Linear on a packed weight; the overload itself, which skips the packet's dispatch (4 us a call).
LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise.default if torch.backends.mkldnn.is_available() else None


def quantize(model: nn.Module, method: str = "int8") -> nn.Module:
    """
    A copy of `model` (`RespM2DModel` or `RespM2DForAudioClassification`) in eval mode, for inference; `model` itself
    is left unchanged. "int8" (CPU): the encoder's Linear layers dynamically quantized to int8, float32 elsewhere.
    "bf16": every weight in bfloat16, and on a CPU the written-out attention. "fp32" (CPU): float32 as before, with the
    encoder's Linear layers multiplying through weights packed for oneDNN and the GELU inside fc1 (`PackedLinear`).
    Do not combine any of them with `autocast`.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown quantization method {method!r}; choose one of: {', '.join(METHODS)}.")
    if not encoders_of(model):
        raise ValueError(f"{type(model).__name__} has no RespM2D encoder to quantize; pass a RespM2D model.")
    device = next(model.parameters()).device
    if method == "fp32":
        if device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
            raise ValueError(
                "quantize(model, 'fp32') packs float32 weights for the CPU; pass a float32 model on the CPU."
            )
        packed = copy.deepcopy(model).eval()
        if packs_weights(torch.float32):
            pack_encoders(packed)
        return packed
    if method == "bf16":
        if device.type == "cpu" and not cpu_has_bf16_kernels():
            warnings.warn(
                "bf16 on this CPU is emulated (no AVX-512 BF16 or AMX instructions): the model runs about 3x (AVX-512) "
                "to 100x (AVX2) slower than in float32. Use quantize(model, 'int8') or float32.",
                stacklevel=2,
            )
        bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
        if device.type == "cpu" and bf16.config._attn_implementation == "sdpa":
            bf16.set_attn_implementation("eager")  # faster in bf16 on CPUs (module docstring)
        if device.type == "cpu" and packs_weights(torch.bfloat16):
            pack_encoders(bf16)
        return bf16
    if device.type != "cpu":
        raise ValueError(f"int8 quantization runs on CPU only, but the model is on {device}; call model.to('cpu').")
    engine = torch.backends.quantized.engine
    if engine not in ENGINES:
        raise RuntimeError(
            f"torch.backends.quantized.engine is {engine!r}, which has no fast int8 Linear on this CPU; "
            f"set it to one of {ENGINES} before quantize()."
        )
    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        # torch.ao.quantization says it moves to torchao, whose int8 Linear is slower on CPU (module docstring).
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        for encoder in encoders_of(quantized):
            torch.ao.quantization.quantize_dynamic(
                encoder, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
            )
    for module in quantized.modules():  # the classifier and the encoder inside it
        if isinstance(module, PreTrainedModel):
            module.save_pretrained = types.MethodType(refuse_to_save, module)
    return quantized


def cpu_has_bf16_kernels() -> bool:
    """
    False on x86 CPUs without bf16 instructions (AVX-512 BF16 or AMX), where PyTorch and oneDNN emulate bf16 matmuls
    in float32 arithmetic: a 2048 x 768 x 3072 product ran at 0.001 TFLOP/s in bf16 against 0.12 in float32 on an AVX2
    CPU (AMD Zen 3), and ViT-Base about 3x slower than in float32 on an AVX-512 one without BF16 (Intel Skylake-SP).
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if None in checks:  # a PyTorch without these checks: AVX-512 at least, which may still emulate bf16
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return any(check() for check in checks)


@functools.cache
def packs_weights(dtype: torch.dtype) -> bool:
    """Whether this PyTorch has oneDNN's Linear with pre-packed weights in `dtype` on this CPU (see `PackedLinear`)."""
    if not torch.backends.mkldnn.is_available() or dtype not in (torch.float32, torch.bfloat16):
        return False
    return dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Linear):
    """
    A bf16 or float32 Linear that multiplies with a copy of its weight pre-packed in oneDNN's blocked layout, optionally
    with an exact (erf) GELU applied to the float32 product inside the same kernel, and with each output feature
    multiplied by `output_scale` (powers of two, so exactly; folded into the packed weight and bias). `weight` and
    `bias` stay ordinary parameters (state dict, saving, `.parameters()` unchanged); the packed copy is remade whenever
    they change (`load_state_dict`, in-place edits under `torch.no_grad()`, a new tensor assigned). In-place edits
    through `.data` bypass PyTorch's version counter and go unseen: edit the parameter itself. Off the fast path
    (gradients needed, another dtype or device, compiling or tracing, no oneDNN kernel for the dtype) it is
    `nn.Linear` (+ GELU, x `output_scale`).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str = "none") -> "PackedLinear":
        packed = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        packed.weight, packed.bias, packed.activation = linear.weight, linear.bias, activation
        packed.register_buffer("output_scale", None, persistent=False)
        packed._packed, packed._packed_from = None, None
        return packed

    def extra_repr(self) -> str:
        return super().extra_repr() + (", activation=gelu" if self.activation == "gelu" else "")

    def __getstate__(self):  # copy.deepcopy and pickle: the packed tensor has no storage; it is remade on use
        return {**self.__dict__, "_packed": None, "_packed_from": None}

    def packed_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The packed weight and the bias, both times `output_scale`; remade when any of them has changed."""
        sources = (self.weight, self.bias, self.output_scale)
        key = tuple(None if tensor is None else (tensor.data_ptr(), tensor._version) for tensor in sources)
        if self._packed_from is None or self._packed_from[0] != key:
            weight, bias, scale = (None if tensor is None else tensor.detach() for tensor in sources)
            if scale is not None:
                scale = scale.to(weight.dtype)
                weight, bias = weight * scale[:, None], None if bias is None else bias * scale
            self._packed = (torch.ops.mkldnn._reorder_linear_weight(weight), bias)
            self._packed_from = (key, sources)  # held, so that no new tensor is allocated at their addresses
        return self._packed

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Cheapest checks first: at batch 1 this Python runs between products of a few hundred microseconds.
        weight = self.weight
        if (
            hidden_states.dtype == weight.dtype
            and not (torch.is_grad_enabled() and (hidden_states.requires_grad or self.trains()))
            and not (torch.compiler.is_compiling() or torch.jit.is_tracing())
            and weight.is_cpu
            and packs_weights(weight.dtype)
        ):
            weight, bias = self.packed_parameters()
            algorithm = "none" if self.activation == "gelu" else ""  # "none": erf, not the tanh approximation
            return LINEAR_POINTWISE(hidden_states, weight, bias, self.activation, [], algorithm)
        output = super().forward(hidden_states)
        output = nn.functional.gelu(output) if self.activation == "gelu" else output
        return output if self.output_scale is None else output * self.output_scale.to(output.dtype)

    def trains(self) -> bool:
        return self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)


def pack_encoders(model: nn.Module) -> None:
    """In every encoder of `model`: `PackedLinear` layers, the exact GELU inside fc1, the query scaling inside qkv."""
    for encoder in encoders_of(model):
        use_packed_linears(encoder, fuse_gelu=model.config.hidden_act == "gelu")
        fold_query_scaling(encoder)


def use_packed_linears(encoder: nn.Module, fuse_gelu: bool) -> None:
    """Replaces the encoder's Linear layers with `PackedLinear`; with `fuse_gelu`, each MLP's GELU moves into fc1."""
    for module in list(encoder.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear.from_linear(child))
        if fuse_gelu and type(module).__name__ == "RespM2DMLP" and isinstance(module.fc1, PackedLinear):
            module.fc1.activation, module.activation = "gelu", nn.Identity()  # not under a wrapper (LoRA) that skips it


def fold_query_scaling(encoder: nn.Module) -> None:
    """
    Moves each attention's query scaling into its packed qkv weight and bias (`output_scale`), which spares a pass
    over the queries. Only where the scaling is a power of two (head width 4, 16, 64 or 256), so that the queries are
    the same to the bit; attention then scales by 1, which it skips.
    """
    for module in encoder.modules():
        if type(module).__name__ != "RespM2DAttention" or type(module.qkv) is not PackedLinear:
            continue  # a wrapper around qkv (LoRA) would add an unscaled update
        if math.frexp(module.scaling)[0] == 0.5 and module.qkv.output_scale is None:
            scale = torch.ones(module.qkv.out_features, device=module.qkv.weight.device)
            scale[: module.qkv.out_features // 3] = module.scaling  # the query rows come first
            module.qkv.output_scale, module.scaling = scale, 1.0


def encoders_of(model):
    """The RespM2D encoders in `model`, found by class name so that models loaded as remote code count too."""
    return [module for module in model.modules() if type(module).__name__ == "RespM2DEncoder"]


def refuse_to_save(model, save_directory, *args, **kwargs):
    raise NotImplementedError(
        f"Cannot save an int8-quantized {type(model).__name__} to {save_directory}: its packed int8 weights have no "
        "safetensors form. Save the float32 model and call resp_hf.quantize(model, 'int8') after loading it."
    )
