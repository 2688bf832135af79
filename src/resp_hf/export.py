"""Export of a resp_m2d folder to ONNX (dynamic batch and length), checked in ONNX Runtime against eager PyTorch."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models.resp_m2d import RespM2DConfig, RespM2DForAudioClassification, RespM2DModel
from .output_folders import atomic_folder, check_output_folder

ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model_int8.onnx"
TOLERANCE = 1e-4  # largest difference to eager PyTorch accepted on the check inputs


@dataclass
class OnnxExportReport:
    """What `export_onnx` wrote and how closely ONNX Runtime reproduces eager PyTorch."""

    path: Path
    inputs: list[str]
    outputs: list[str]
    max_abs_difference: float

    def __str__(self):
        return (
            f"Wrote {self.path} (inputs {', '.join(self.inputs)}; outputs {', '.join(self.outputs)}; dynamic batch "
            f"and frames); ONNX Runtime matches PyTorch within {self.max_abs_difference:.2e}."
        )


class _TensorOutputs(nn.Module):
    """The model with plain tensors in and out, as an ONNX graph needs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_features, attention_mask):
        outputs = self.model(input_features, attention_mask=attention_mask, return_dict=True)
        if isinstance(self.model, RespM2DForAudioClassification):
            return outputs.logits
        return outputs.last_hidden_state, outputs.pooler_output


def output_names(model) -> list[str]:
    return ["logits"] if isinstance(model, RespM2DForAudioClassification) else ["last_hidden_state", "pooler_output"]


def export_program(model, example_features, example_mask):
    """
    `torch.export` of the model (eval mode) with dynamic batch and frames. Size-oblivious shapes let one program
    serve clips of one chunk and of many (otherwise export specializes on "more than one chunk").
    """
    batch, frames = torch.export.Dim("batch", max=4096), torch.export.Dim("frames", max=10_000_000)
    dynamic = {"input_features": {0: batch, 2: frames}, "attention_mask": {0: batch, 1: frames}}
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        return torch.export.export(
            _TensorOutputs(model.eval()), (example_features, example_mask), dynamic_shapes=dynamic
        )


def check_inputs(config, batch=3, units=2.5):
    """Random log-mel (batch, n_mels, frames) with a right-padded attention mask (row i keeps a shorter prefix)."""
    frames = int(units * config.unit_frames)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, config.num_mel_bins, frames, generator=generator)
    lengths = torch.tensor([frames - i * frames // (batch + 1) for i in range(batch)])
    mask = (torch.arange(frames)[None, :] < lengths[:, None]).int()  # int32, as the feature extractor returns
    return features * mask[:, None], mask


def export_onnx(model_folder, output_dir, overwrite: bool = False, int8: bool = False) -> OnnxExportReport:
    """
    Exports the model in `model_folder` (an encoder, or a classifier if its config says so; in float32 whatever
    dtype it was saved in) to `output_dir/model.onnx` with dynamic batch and frame axes, with its config and
    preprocessor config, checks the graph in ONNX Runtime on inputs of other shapes than the traced ones and, with
    `int8`, adds `model_int8.onnx` (see `quantize_onnx`). The folder appears only once all of it is written.
    """
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise ValueError(f"ONNX export needs {error.name}: pip install 'resp-hf[export]'.") from None
    model_folder, output_dir = Path(model_folder), Path(output_dir)
    if not (model_folder / "config.json").is_file():
        problem = "has no config.json" if model_folder.is_dir() else "does not exist"
        raise ValueError(f"Model folder {model_folder} {problem}: pass a converted or fine-tuned resp_m2d folder.")
    check_output_folder(
        output_dir, overwrite, option="overwrite=True (--overwrite)", inputs=(model_folder,), replaced=True
    )
    config = RespM2DConfig.from_pretrained(model_folder)
    classifier = "RespM2DForAudioClassification" in (config.architectures or [])
    model_class = RespM2DForAudioClassification if classifier else RespM2DModel
    model = model_class.from_pretrained(model_folder, dtype=torch.float32).eval()
    names = output_names(model)
    example = check_inputs(config, batch=2, units=2.5)
    program = torch.onnx.export(
        export_program(model, *example),
        example,
        input_names=["input_features", "attention_mask"],
        output_names=names,
        dynamo=True,
        verbose=False,
    )
    with atomic_folder(output_dir) as folder:
        program.save(str(folder / ONNX_FILE))
        model.config.to_json_file(folder / "config.json")  # float32, as the graph
        if (model_folder / "preprocessor_config.json").is_file():
            shutil.copy(model_folder / "preprocessor_config.json", folder / "preprocessor_config.json")
        difference = onnx_difference(folder / ONNX_FILE, model, model_folder)
        if int8:
            quantize_onnx(folder / ONNX_FILE, folder / INT8_ONNX_FILE)
    return OnnxExportReport(output_dir / ONNX_FILE, ["input_features", "attention_mask"], names, difference)


def onnx_difference(onnx_path: Path, model, model_folder: Path) -> float:
    """Largest difference to eager PyTorch on inputs of other shapes than the traced ones; refused above TOLERANCE."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    difference = max(
        max_difference(session, model, *check_inputs(model.config, batch, units))
        for batch, units in ((3, 1.7), (1, 0.3))
    )
    if not difference <= TOLERANCE:
        raise ValueError(
            f"ONNX Runtime differs from PyTorch by {difference:.2e} (> {TOLERANCE}) for {model_folder}: "
            "please report it with your torch and onnxruntime versions."
        )
    return difference


def max_difference(session, model, features, mask) -> float:
    """Largest absolute difference between the ONNX Runtime session's outputs and eager PyTorch."""
    names = output_names(model)
    received = session.run(names, {"input_features": features.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = _TensorOutputs(model)(features, mask)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return max(float((torch.from_numpy(r) - e).abs().max()) for r, e in zip(received, expected))


def quantize_onnx(onnx_path, output_path) -> Path:
    """
    Writes an int8 copy of the ONNX model at `onnx_path` to `output_path` with ONNX Runtime's dynamic quantization:
    MatMul and Gemm weights in int8 per output channel, activations quantized per call; everything else stays fp32.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise ValueError(f"ONNX quantization needs {error.name}: pip install 'resp-hf[export]'.") from None
    if not Path(onnx_path).is_file():
        raise ValueError(f"ONNX model {onnx_path} does not exist: export one first with `resp-hf export onnx`.")
    quantize_dynamic(
        onnx_path, output_path, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, weight_type=QuantType.QInt8
    )
    return Path(output_path)
