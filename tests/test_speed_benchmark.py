import importlib.util
import json
import os
import resource
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, tiny_model

SPEED = REPO_ROOT / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_writes_interleaved_rows_for_every_dtype_with_accuracy_and_long_recordings(tmp_path, speed):
    dtypes = speed.dtype_names(torch.device("cpu"))  # bf16 only where the CPU has bf16 kernels
    bf16 = "bf16" in dtypes
    result = subprocess.run(
        [sys.executable, SPEED, "--quick", "--compile", "--output", tmp_path],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["feature_extraction"]["audio_seconds_per_second"] > 0
    rows = {(row["dtype"], row["batch_size"]) for row in report["end_to_end"]}
    end_to_end = [*dtypes, "bf16 autocast"] if bf16 else dtypes
    compiled = ["fp32 (compiled)", "bf16 (compiled)"] if bf16 else ["fp32 (compiled)"]
    assert rows == {(d, b) for d in end_to_end + compiled for b in (1, 2)}
    for row in report["end_to_end"] + report["chunk_batches"] + report["mixed_lengths"]["rows"]:
        has_references = not row["dtype"].startswith("int8")
        assert ("fraction_of_model-shape" in row) == has_references and ("fraction_of_square" in row) == has_references
        assert 0.99 < row["cosine_to_fp32"] <= 1.0 + 1e-6
        assert row["seconds_min"] <= row["seconds_median"]
    int8 = [row for row in report["end_to_end"] if row["dtype"] == "int8"]
    assert all(row["speedup_over_fp32"] > 0 and ("speedup_over_bf16" in row) == bf16 for row in int8)
    if bf16:  # the bf16 rows run the bfloat16-weights copy; autocast keeps float32 weights: different numbers
        by_row = {(row["dtype"], row["batch_size"]): row for row in report["end_to_end"]}
        assert by_row[("bf16", 1)]["cosine_to_fp32"] != by_row[("bf16 autocast", 1)]["cosine_to_fp32"]
        assert by_row[("bf16 autocast", 1)]["speedup_over_bf16"] > 0
    else:
        assert report["machine"].endswith(" (bf16 emulated: no bf16 rows)")
    onnx_runtime = report["onnx_runtime"]["rows"]  # interleaved with eager fp32, which keeps its references
    assert [(row["dtype"], row["batch_size"]) for row in onnx_runtime] == [
        (dtype, batch) for batch in (1, 2) for dtype in ("fp32", "ORT fp32", "ORT int8")
    ]
    for row in onnx_runtime:
        assert ("fraction_of_model-shape" in row) == (row["dtype"] == "fp32")
        assert row["dtype"] == "fp32" or row["speedup_over_fp32"] > 0
    assert min(row["cosine_to_fp32"] for row in onnx_runtime if row["dtype"] == "ORT fp32") > 1 - 1e-6
    assert min(row["cosine_to_fp32"] for row in onnx_runtime) > 0.99
    mixed = report["mixed_lengths"]["rows"]
    assert {(row["dtype"], row["batch_size"], row["order"]) for row in mixed} == {
        (dtype, batch, order)
        for dtype in dtypes
        for batch, order in ((1, "length-bucketed"), (2, "length-bucketed"), (2, "input order"))
    }
    assert all(row["padded_flop_share"] == 0 for row in mixed if row["batch_size"] == 1)
    assert [(row["dtype"], row["chunks"]) for row in report["chunk_batches"]] == [
        (dtype, chunks) for chunks in (2, 4) for dtype in dtypes
    ]
    assert [(row["dtype"], row["minutes"]) for row in report["long_recordings"]] == [(d, 0.2) for d in dtypes]
    assert all(row["peak_memory_mb"] >= row["peak_memory_before_mb"] > 0 for row in report["long_recordings"])
    markdown = (tmp_path / "speed.md").read_text()
    assert markdown.startswith("**Quick check (`--quick`): a small model, 2 rounds; not a measurement to report.**")
    assert "- **int8**: batch 1:" in markdown and "| dtype | minutes |" in markdown
    assert "- **ORT int8**: batch 1:" in markdown and "| runtime | batch | clips/s |" in markdown
    assert "| dtype | batch | clips/s | audio s/s | achieved TFLOP/s | model-shape matmul TFLOP/s |" in markdown


def test_a_long_recording_worker_reports_its_own_peak_memory_not_its_parents(tmp_path):
    parent_peak = np.ones(2**31 // 8)  # 2 GiB touched: this process's peak is now above 2 GiB
    command = [sys.executable, SPEED, "--quick", "--output", tmp_path, "--long-recording", "0.05", "--dtype", "fp32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.splitlines()[-1])
    assert parent_peak.nbytes / 2**20 > 2 * row["peak_memory_mb"]  # the small model's worker needs well under 1 GiB
    assert row["peak_memory_mb"] >= row["peak_memory_before_mb"] > 0


def test_the_peak_memory_is_read_where_there_is_no_proc_file_and_no_resource_module(speed, monkeypatch, tmp_path):
    monkeypatch.setattr(speed, "PROC_STATUS", tmp_path / "missing")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = speed.peak_memory_mb(torch.device("cpu"))
    assert before / 2**20 <= peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # as macOS: bytes
    monkeypatch.setitem(sys.modules, "resource", None)  # Windows
    working_set = SimpleNamespace(peak_wset=3 * 2**20)
    fake_psutil = SimpleNamespace(Process=lambda: SimpleNamespace(memory_info=lambda: working_set))
    monkeypatch.setitem(sys.modules, "psutil", fake_psutil)
    assert speed.peak_memory_mb(torch.device("cpu")) == 3.0


def test_the_peak_memory_restarts_from_what_the_process_holds_now(speed):
    freed = np.ones(2**30 // 8)  # 1 GiB touched, then given back
    del freed
    peak = speed.peak_memory_mb(torch.device("cpu"))
    speed.reset_peak_memory(torch.device("cpu"))
    assert speed.peak_memory_mb(torch.device("cpu")) < peak - 900


def test_fractions_are_same_moment_ratios_and_those_above_100_percent_are_marked_invalid(speed):
    # A round where the machine slowed down affects the reference and the run alike: the ratio stays.
    assert speed.same_moment([2.0, 4.0, 1.0], [1.0, 2.0, 0.5]) == (2.0, 2.0)
    valid = {"fraction_of_square": 0.9, "fraction_of_square_best": 0.95}
    assert speed.percent(valid, "square") == "90% (95%)"
    assert speed.percent({**valid, "fraction_of_square_best": 1.02}, "square") == "90% (102%) **invalid**"
    assert speed.percent({}, "square") == "—"


def test_the_summary_counts_invalid_fractions_of_every_table_the_onnx_runtime_one_included(speed):
    def row(dtype, fraction=None, best=None):
        fractions = (
            {} if fraction is None else {"fraction_of_model-shape": fraction, "fraction_of_model-shape_best": best}
        )
        return {"dtype": dtype, "batch_size": 1, "clips_per_second": 2.0, "cosine_to_fp32": 1.0, **fractions}

    report = {
        "end_to_end": [row("fp32", 0.9, 1.01)],
        "mixed_lengths": {"rows": [row("fp32", 0.9, 0.95)]},
        "chunk_batches": [row("fp32", 1.02, 0.99)],
        "onnx_runtime": {"rows": [row("fp32", 1.004, 1.13), row("ORT int8")]},
    }
    assert speed.summary(report)[-1].endswith("within a round): 3.")
    timed = {"audio_seconds_per_second": 20.0, "achieved_flops": 1e11}
    table = speed.onnx_runtime_table({"rows": [{**row("fp32", 1.004, 1.13), **timed}], "intra_op_threads": 2}, 10.0)
    assert table[-1] == "| eager fp32 | 1 | 2.00 | 20.0 | 0.100 | 100% (113%) **invalid** | 1x | 1.000000 |"


def test_model_shape_reference_runs_the_encoder_products_of_the_recorded_passes(speed, monkeypatch):
    model = tiny_model()
    config = model.config
    chunks = torch.randn(3, config.num_mel_bins, config.unit_frames)
    passes = speed.recorded_passes(model, lambda: speed.run_chunks(model, None, chunks))
    tokens = 1 + config.num_frequency_patches * config.time_patches_per_chunk
    assert passes == [(3, tokens)]
    _, flops = speed.model_shape_matmuls(config, passes, model.device, torch.float32, packed=False)
    patch = 2 * (tokens - 1) * config.patch_size[0] * config.patch_size[1] * config.hidden_size
    assert speed.encoder_flops(config, passes) == flops + 3 * patch
    # a repeated and a shorter pass, as mixed-length clips make: every pass runs and counts, in every layer
    passes = [(3, tokens), (3, tokens), (1, 11)]
    run, flops = speed.model_shape_matmuls(config, passes, model.device, torch.float32, packed=False)
    width, hidden, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    rows = 3 * tokens + 3 * tokens + 11
    attention = 4 * width * (3 * tokens**2 + 3 * tokens**2 + 11**2)
    assert flops == config.num_hidden_layers * (2 * rows * (4 * width * width + 2 * width * hidden) + attention)
    products = []
    matmul = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda a, b: products.append((a.shape, b.shape)) or matmul(a, b))
    run()
    head_width = width // heads
    per_layer = []
    for count, length in passes:
        batch = count * heads
        per_layer += [((batch, length, head_width), (batch, head_width, length))]  # queries x keys
        per_layer += [((batch, length, length), (batch, length, head_width))]  # probabilities x values
    assert products == per_layer * config.num_hidden_layers


def test_the_square_reference_is_given_the_model_shape_references_flops(speed, monkeypatch):
    model = tiny_model()
    given = []
    square_matmul = speed.square_matmul
    monkeypatch.setattr(speed, "square_matmul", lambda *args: given.append(args[-1]) or square_matmul(*args))
    passes = [(2, 31)]
    configs = {"fp32": (model, None)}
    (row,) = speed.measure_group(configs, lambda candidate, dtype: None, passes, 1, repeats=1, warmup=0)
    model_shape_flops = speed.model_shape_matmuls(model.config, passes, model.device, torch.float32, False)[1]
    assert given == [model_shape_flops]
    assert "fraction_of_square" in row and "fraction_of_model-shape" in row


def test_bf16_rows_run_the_bfloat16_weights_copy_and_autocast_rows_the_float32_model(speed):
    model = tiny_model()
    bf16, dtype = speed.configuration(model, "bf16")
    assert dtype is None and {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert speed.configuration(model, "bf16 autocast") == (model, torch.bfloat16)
    # both bf16 rows are measured against the bf16 matmul references; int8 and ONNX Runtime against none
    assert [speed.reference_dtype(name) for name in ("bf16", "bf16 autocast", "fp32", "int8", "ORT fp32")] == [
        "bf16",
        "bf16",
        "fp32",
        None,
        None,
    ]


def test_packed_fp32_rows_run_the_packed_copy_against_a_packed_reference_of_the_same_shapes(speed, monkeypatch):
    model = tiny_model()
    packed, dtype = speed.configuration(model, "fp32 packed")
    assert dtype is None and {type(module.mlp.fc1).__name__ for module in packed.encoder.layer} == {"PackedLinear"}
    cpu = torch.device("cpu")
    packed_references = ("fp32 packed model-shape", "fp32 packed square", True)
    assert speed.matmul_references("fp32 packed", cpu) == packed_references
    assert speed.matmul_references("fp32", cpu) == ("fp32 model-shape", "fp32 square", False)
    passes = [(2, 31)]
    run, flops = speed.model_shape_matmuls(model.config, passes, cpu, torch.float32, packed=True)
    assert flops == speed.model_shape_matmuls(model.config, passes, cpu, torch.float32, packed=False)[1]
    # as many square products as make the model-shape reference's FLOPs, at least one
    flops = 3.2 * 2 * 32**3
    square, square_flops = speed.square_matmul(cpu, torch.float32, 32, packed=True, flops=flops)
    assert square_flops == speed.square_matmul(cpu, torch.float32, 32, packed=False, flops=flops)[1] == 3 * 2 * 32**3
    assert speed.square_matmul(cpu, torch.float32, 32, packed=False, flops=1)[1] == 2 * 32**3
    calls = []
    quantize_module = importlib.import_module("resp_hf.quantize")  # the module, not the function resp_hf exports
    original = quantize_module.LINEAR_POINTWISE  # the oneDNN op PackedLinear calls
    monkeypatch.setattr(
        quantize_module, "LINEAR_POINTWISE", lambda *args: calls.append(args[0].shape) or original(*args)
    )
    run()  # neither reference needs `torch.no_grad()`
    square()
    # qkv, proj, fc1, fc2 of every layer, then the square products: all on oneDNN's packed weights
    assert calls == [(62, 64), (62, 64), (62, 64), (62, 128)] * model.config.num_hidden_layers + [(32, 32)] * 3


def test_a_full_run_leaves_bf16_out_on_a_cpu_that_emulates_it_and_says_so(speed, monkeypatch):
    cpu = torch.device("cpu")
    for name in [name for name in os.environ if name.startswith(("MALLOC_", "LD_PRELOAD"))]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(speed, "cpu_has_bf16_kernels", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    assert speed.dtype_names(cpu) == ["fp32", "fp32 packed", "int8"]
    assert speed.machine_description(cpu).endswith(
        ", native bf16: no, AVX-512 VNNI: no, allocator: default (bf16 emulated: no bf16 rows)"
    )
    monkeypatch.setattr(speed, "cpu_has_bf16_kernels", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert speed.dtype_names(cpu) == ["fp32", "fp32 packed", "bf16", "int8"]
    assert "PyTorch CPU kernels" in speed.machine_description(cpu)
    assert speed.machine_description(cpu).endswith(", native bf16: yes, AVX-512 VNNI: yes, allocator: default")


def test_a_full_run_on_a_gpu_adds_the_large_batches_a_gpu_needs_and_keeps_the_cpu_rows(speed):
    cpu, gpu = speed.run_settings(False, torch.device("cpu")), speed.run_settings(False, torch.device("cuda"))
    assert max(gpu["batch_sizes"]) >= 64 and max(gpu["chunk_counts"]) >= 1024 and max(gpu["mixed_batch_sizes"]) >= 64
    assert set(cpu["batch_sizes"]) <= set(gpu["batch_sizes"]) and set(cpu["chunk_counts"]) <= set(gpu["chunk_counts"])
    assert {key: value for key, value in gpu.items() if key not in speed.GPU_ADDITIONS} == {
        key: value for key, value in cpu.items() if key not in speed.GPU_ADDITIONS
    }
    assert speed.run_settings(True, torch.device("cuda")) == speed.run_settings(True, torch.device("cpu"))
    assert max(speed.run_settings(True, torch.device("cpu"))["batch_sizes"]) < max(cpu["batch_sizes"])


def test_the_machine_line_names_the_allocator_settings_a_run_was_made_under(speed, monkeypatch):
    for name in [name for name in os.environ if name.startswith(("MALLOC_", "LD_PRELOAD"))]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(speed, "cpu_has_bf16_kernels", lambda: True)
    assert speed.machine_description(torch.device("cpu")).endswith(", allocator: default")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4294967296")
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")
    description = speed.machine_description(torch.device("cpu"))
    assert description.endswith(
        ", allocator: LD_PRELOAD=libtcmalloc_minimal.so.4, MALLOC_MMAP_THRESHOLD_=4294967296, "
        "MALLOC_TRIM_THRESHOLD_=4294967296"
    )
