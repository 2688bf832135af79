"""Speed of resp_hf: feature extraction, end-to-end embedding and the encoder's achieved FLOP/s against the machine.

    python benchmarks/speed.py --output benchmarks/results            # ViT-Base (random weights), full run
    python benchmarks/speed.py --model ./resp-m2d --output out         # a converted checkpoint
    python benchmarks/speed.py --quick --output out                    # a small model, for CI (not for reporting)

Writes `speed.json` and `speed.md`. Every measured configuration runs interleaved with the others of its group and
with two matrix-product references in the same dtype: the encoder's own products at its own shapes (every layer's
qkv, projection and MLP Linear layers at the token counts it runs, and attention's two batched products per chunk and
head) and square products of as many FLOPs, both multiplying as the configuration does (on a CPU with oneDNN, bf16 and
fp32 packed on pre-packed weights), so each lasts about as long as the encoder's products. Each round runs everything
once, so each fraction of attainable and each speed-up is a ratio of times taken at the same moment; the tables give the
median over rounds (and the ratio of the best times). A fraction above 100% means the machine changed speed within a
round: it is marked invalid. The bf16 rows use `resp_hf.quantize(model, "bf16")` (bfloat16 weights); the end-to-end
table adds "bf16 autocast" (float32 weights under `torch.autocast`) against the same bf16 reference. On a CPU the int8
rows use `resp_hf.quantize(model, "int8")` and the fp32 packed rows `quantize(model, "fp32")` (against references
packed the same way); on a GPU, fp16 autocast is added. On x86 CPUs without bf16 instructions
(AVX-512 BF16 or AMX), where PyTorch emulates bf16 (3x to 100x slower than fp32), the bf16 rows are left out. On a GPU
the full run adds batch 64 and passes of 256 and 1024 chunks, where a GPU's matmuls approach their rate.
On a CPU with the [export] extra, ONNX Runtime (the `resp-hf export onnx --int8` graphs, fp32 and int8) runs end to end
interleaved with eager fp32.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from functools import partial
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
import transformers

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel, quantize
from resp_hf.export import INT8_ONNX_FILE, export_onnx, quantize_onnx
from resp_hf.quantize import PackedLinear, cpu_has_bf16_kernels, packs_weights

RATE = 16000
ALLOCATOR_VARIABLES = ("MALLOC_", "LD_PRELOAD")  # glibc tunables, a preloaded malloc
PROC_STATUS = Path("/proc/self/status")  # Linux: the process's peak resident memory (VmHWM)
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # int8 has no reference


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_times(functions, repeats, warmup=1):
    """Wall times of each of `functions` (name -> callable) over `repeats` rounds, each round running all in turn."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def reference_linear(in_features, out_features, device, dtype, packed):
    """A bias-free Linear without gradients for a matmul reference (`packed`: a pre-packed `PackedLinear`)."""
    linear = torch.nn.Linear(in_features, out_features, bias=False).to(device, dtype).requires_grad_(False)
    return PackedLinear.from_linear(linear) if packed else linear


def square_matmul(device, dtype, size, packed, flops):
    """
    Square matrix products of `size` in `dtype`, as many as come nearest to `flops` (at least one), so that on a CPU
    the reference lasts about as long as the encoder's products (`packed`: a `PackedLinear` of `size` x `size` on
    `size` rows, as a packed configuration multiplies); and their FLOPs.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    if packed:
        product = partial(reference_linear(size, size, device, dtype, packed), a)
    else:
        product = partial(torch.matmul, a, torch.randn(size, size, device=device).to(dtype))
    count = max(1, round(flops / (2 * size**3)))

    def run():
        for _ in range(count):
            product()

    return run, count * 2 * size**3


def model_shape_matmuls(config, passes, device, dtype, packed):
    """
    The encoder's matrix products at the shapes of its `passes` (chunks, tokens), as the encoder runs them, without
    bias, for every layer: the qkv, projection, fc1 and fc2 Linear layers on a pass's token rows (`packed`:
    `quantize`'s pre-packed `PackedLinear`), and attention's two products per chunk and head, queries x keys and
    probabilities x values (batched matmuls); and their FLOPs. All layers multiply one layer's weights. It lasts as
    long as the encoder's products, so that both sample the machine over the same stretch of time.
    """
    width, hidden, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    shapes = ((width, 3 * width), (width, width), (width, hidden), (hidden, width))
    linears = [reference_linear(k, n, device, dtype, packed) for k, n in shapes]

    def randn(*shape):
        return torch.randn(*shape, device=device).to(dtype)

    head_width, operands = width // heads, {}
    for chunks, tokens in set(passes):
        batch = chunks * heads
        rows = [randn(chunks * tokens, k) for k, _ in shapes]
        attention = [randn(batch, tokens, head_width), randn(batch, head_width, tokens)]
        attention += [randn(batch, tokens, tokens), randn(batch, tokens, head_width)]
        operands[chunks, tokens] = rows, attention

    def run():
        for _ in range(config.num_hidden_layers):
            for chunk_pass in passes:
                rows, (queries, keys, probabilities, values) = operands[chunk_pass]
                for x, linear in zip(rows, linears):
                    linear(x)
                torch.matmul(queries, keys)
                torch.matmul(probabilities, values)

    return run, config.num_hidden_layers * sum(chunks * layer_flops(config, tokens) for chunks, tokens in passes)


def layer_flops(config, tokens):
    """Multiply-add FLOPs (x2) of one block's Linear and attention products on one chunk of `tokens` (incl. CLS)."""
    width = config.hidden_size
    return 2 * tokens * (4 * width * width + 2 * width * config.intermediate_size) + 4 * tokens * tokens * width


def encoder_flops(config, passes):
    """Multiply-add FLOPs (x2) of the encoder's matrix products over `passes` of (chunks, tokens incl. CLS)."""
    patch = config.patch_size[0] * config.patch_size[1]
    total = 0
    for chunks, tokens in passes:
        total += chunks * (
            config.num_hidden_layers * layer_flops(config, tokens) + 2 * (tokens - 1) * patch * config.hidden_size
        )
    return total


def chunk_passes(config, seconds):
    """(1, tokens) for each chunk of one clip of `seconds`, as the encoder cuts it (no padding)."""
    frames = 1 + int(seconds * RATE) // (config.hop_length * RATE // config.sampling_rate)
    bands, unit, patch = config.num_frequency_patches, config.unit_frames, config.patch_size[1]
    padded = -(-frames // patch) * patch
    columns = [min(unit, padded - start) // patch for start in range(0, frames, unit)]
    return [(1, 1 + bands * c) for c in columns if c]


def recorded_passes(model, run):
    """The encoder passes `run()` makes, as (chunks, tokens) with padding, recorded at the embeddings."""
    passes = []
    handle = model.embeddings.register_forward_hook(lambda module, args, output: passes.append(output.shape[:2]))
    try:
        run()
    finally:
        handle.remove()
    return [tuple(shape) for shape in passes]


def peak_memory_mb(device):
    """
    Peak GPU memory, or the process's peak resident memory. On Linux that is VmHWM: getrusage's maxrss is carried
    over from the parent into a new process (through fork and exec), so a fresh worker would report its parent's peak.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if PROC_STATUS.exists():
        line = next(line for line in PROC_STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    try:
        import resource  # Unix
    except ImportError:  # Windows: the peak working set
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def reset_peak_memory(device):
    """Starts `peak_memory_mb` afresh from what is held now (Linux: VmHWM; elsewhere on a CPU it cannot be reset)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")


def run_encoder(model, dtype, features):
    with torch.no_grad(), torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
        return model(**features).pooler_output


def run_end_to_end(model, dtype, extractor, waveforms):
    """Waveforms to pooled embeddings: features in PyTorch, then the model or an ONNX Runtime session."""
    if isinstance(model, torch.nn.Module):
        return run_encoder(model, dtype, extractor(waveforms, sampling_rate=RATE, device=model.device))
    features = extractor(waveforms, sampling_rate=RATE)
    (pooled,) = model.run(["pooler_output"], {name: value.numpy() for name, value in features.items()})
    return torch.from_numpy(pooled)


def run_in_input_order(model, dtype, extractor, waveforms, batch_size):
    """End to end over consecutive slices of `waveforms`, without `embed`'s length bucketing."""
    slices = [waveforms[start : start + batch_size] for start in range(0, len(waveforms), batch_size)]
    return torch.cat([run_end_to_end(model, dtype, extractor, part) for part in slices])


def run_embed(model, dtype, waveforms, batch_size):
    return model.embed(waveforms, sampling_rate=RATE, batch_size=batch_size, progress=False, autocast_dtype=dtype)


def run_chunks(model, dtype, chunks):
    """The encoder alone on full `chunks` (no mask); returns the CLS states."""
    with torch.no_grad(), torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
        return model.encode_chunks(chunks)[0][:, 0]


def noise_clips(rng, seconds):
    return [(0.1 * rng.standard_normal(int(s * RATE))).astype(np.float32) for s in seconds]


def measure_feature_extraction(extractor, clips, clip_seconds, device, repeats):
    times = interleaved_times({"extract": lambda: extractor(clips, sampling_rate=RATE, device=device)}, repeats)
    return {
        "clips": len(clips),
        "clip_seconds": clip_seconds,
        "audio_seconds_per_second": len(clips) * clip_seconds / statistics.median(times["extract"]),
    }


def same_moment(numerator, denominator):
    """Median over rounds of numerator[i] / denominator[i], and the ratio of the minima."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return statistics.median(ratios), min(numerator) / min(denominator)


def reference_dtype(name):
    """The matmul dtype a configuration is compared with ("bf16 autocast" -> "bf16"); None for int8 and ORT."""
    dtype = name.split()[0]
    return dtype if dtype in MATMUL_DTYPES else None


def matmul_references(name, device):
    """
    The names of a configuration's model-shape and square references and whether both multiply with packed weights
    as the configuration does: "fp32 packed" and, on a CPU with oneDNN bf16, the bf16 copy (and autocast, against the
    same references). A packed product can outrun an unpacked one, so neither reference may be slower by design.
    """
    dtype = reference_dtype(name)
    packed = device.type == "cpu" and (name == "fp32 packed" or dtype == "bf16")
    packed = packed and packs_weights(MATMUL_DTYPES[dtype])
    prefix = "fp32 packed" if name == "fp32 packed" else dtype
    return f"{prefix} model-shape", f"{prefix} square", packed


def measure_group(configs, make_run, passes, useful_flops, repeats, warmup=1):
    """
    Runs `make_run(model, dtype)` for every configuration (name -> (model, autocast dtype)) interleaved with the
    model-shape and square matmul references of each float dtype, after `warmup` rounds (the references get at least
    one). Returns one row per configuration with median times, same-moment fractions of both references and
    same-moment speed-ups over fp32 (and bf16).
    """
    model = next(iter(configs.values()))[0]
    device, config = model.device, model.config
    functions, references, reference_flops = {}, {}, {}
    keys = {}
    for name, (candidate, dtype) in configs.items():
        functions[name] = partial(make_run, candidate, dtype)
        matmul = reference_dtype(name)
        if not matmul:
            continue
        model_shape, square, packed = matmul_references(name, device)
        keys[name] = {"model-shape": model_shape, "square": square}
        if model_shape not in references:
            references[model_shape], reference_flops[model_shape] = model_shape_matmuls(
                config, passes, device, MATMUL_DTYPES[matmul], packed
            )
        if square not in references:
            size = 2048 if device.type == "cpu" else 8192
            references[square], reference_flops[square] = square_matmul(
                device, MATMUL_DTYPES[matmul], size, packed, reference_flops[model_shape]
            )
    for reference in references.values():
        reference()
    times = interleaved_times(functions | references, repeats, warmup)
    rows = []
    for name in configs:
        seconds = times[name]
        row = {
            "dtype": name,
            "seconds_median": statistics.median(seconds),
            "seconds_min": min(seconds),
            "achieved_flops": useful_flops / statistics.median(seconds),
        }
        for reference, key in keys.get(name, {}).items():
            if key in times:
                # achieved / attainable = (useful / t) / (reference FLOPs / t_reference), per round
                median, best = same_moment(times[key], seconds)
                scale = useful_flops / reference_flops[key]
                row[f"{reference}_matmul_flops"] = reference_flops[key] / statistics.median(times[key])
                row[f"fraction_of_{reference}"] = median * scale
                row[f"fraction_of_{reference}_best"] = best * scale
        for other in ("fp32", "bf16"):
            if other in times and other != name:
                row[f"speedup_over_{other}"] = same_moment(times[other], seconds)[0]
        rows.append(row)
    return rows


def measure_configurations(configs, make_run, repeats, useful_flops=None, warmup=1, **fields):
    """
    `measure_group` for the passes `make_run` makes, with each row's cosine to fp32 and `fields` added. A first run
    of every configuration, which records fp32's passes and gives the outputs for the cosines, is its first warm-up.
    """
    model = configs["fp32"][0]
    runs = {name: partial(make_run, candidate, dtype) for name, (candidate, dtype) in configs.items()}
    outputs = {}
    passes = recorded_passes(model, lambda: outputs.update(fp32=runs["fp32"]()))
    outputs.update({name: run() for name, run in runs.items() if name != "fp32"})
    computed = encoder_flops(model.config, passes)
    rows_flops = useful_flops or computed
    rows = measure_group(configs, make_run, passes, rows_flops, repeats, max(warmup - 1, 0))
    fp32 = outputs["fp32"].float().cpu()
    cosines = {
        name: torch.nn.functional.cosine_similarity(output.float().cpu(), fp32).min().item()
        for name, output in outputs.items()
    }
    for row in rows:
        row.update(fields, cosine_to_fp32=cosines[row["dtype"]], padded_flop_share=1 - rows_flops / computed)
    return rows


def measure_end_to_end(configs, extractor, clips, clip_seconds, batch_sizes, repeats):
    """Waveform-to-embedding throughput of equal-length clips, per batch size and configuration."""
    rows = []
    for batch_size in batch_sizes:
        make_run = partial(run_end_to_end, extractor=extractor, waveforms=clips[:batch_size])
        for row in measure_configurations(configs, make_run, repeats, batch_size=batch_size):
            row["clips_per_second"] = batch_size / row["seconds_median"]
            row["audio_seconds_per_second"] = batch_size * clip_seconds / row["seconds_median"]
            rows.append(row)
    return rows


def onnx_runtime_sessions(model):
    """
    ONNX Runtime sessions ("ORT fp32", "ORT int8") of `model` as `resp-hf export onnx --int8` writes it, with as
    many intra-op threads as torch uses; or a note saying why there are none.
    """
    missing = [name for name in ("onnxruntime", "onnxscript") if find_spec(name) is None]
    if missing:
        return f"ONNX Runtime rows skipped: {', '.join(missing)} not installed (pip install 'resp-hf[export]')."
    if model.device.type != "cpu":
        return "ONNX Runtime rows skipped: they run on the CPU, beside eager on the CPU only."
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(Path(folder) / "model")
        fp32 = export_onnx(Path(folder) / "model", Path(folder) / "onnx").path
        int8 = quantize_onnx(fp32, fp32.parent / INT8_ONNX_FILE)
        return {
            name: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in (("ORT fp32", fp32), ("ORT int8", int8))
        }


def measure_onnx_runtime(model, extractor, clips, clip_seconds, batch_sizes, repeats):
    """
    End to end through ONNX Runtime, interleaved with eager fp32 (and its matmul references). ORT's kernels are not
    torch's, so its rows give the same-moment speed-up over eager fp32 rather than fractions of torch's matmuls.
    """
    sessions = onnx_runtime_sessions(model)
    if isinstance(sessions, str):
        print(sessions)
        return {"rows": [], "note": sessions}
    configs = {"fp32": (model, None), **{name: (session, None) for name, session in sessions.items()}}
    rows = measure_end_to_end(configs, extractor, clips, clip_seconds, batch_sizes, repeats)
    return {"rows": rows, "intra_op_threads": torch.get_num_threads()}


def measure_compiled(configs, extractor, clips, clip_seconds, batch_sizes, repeats):
    """
    The end-to-end measurement with the fp32 and bf16 models' encoder blocks compiled by inductor with frozen weights
    (`freezing`: weights as constants, so its Linear layers multiply pre-packed weights and the elementwise work between
    the products runs in fused kernels), one compilation per input shape.
    """
    import torch._inductor.config

    floats = {name: configs[name] for name in ("fp32", "bf16") if name in configs}
    eager = {name: model.encoder for name, (model, _) in floats.items()}
    for name, (model, _) in floats.items():
        model.encoder = torch.compile(eager[name], dynamic=False)
    try:
        with torch._inductor.config.patch(freezing=True):
            rows = measure_end_to_end(floats, extractor, clips, clip_seconds, batch_sizes, repeats)
    finally:
        for name, (model, _) in floats.items():
            model.encoder = eager[name]
    for row in rows:
        row["dtype"] += " (compiled)"
    return rows


def measure_mixed_lengths(configs, extractor, clips, batch_sizes, repeats):
    """
    Throughput on clips of mixed lengths through `embed` (length bucketing), and in input order at the middle batch
    size. `achieved_flops` counts the useful encoder FLOPs (no padding); `padded_flop_share` is the part of the
    encoder FLOPs spent on the padding of shorter last chunks.
    """
    model = configs["fp32"][0]
    useful = sum(encoder_flops(model.config, chunk_passes(model.config, len(clip) / RATE)) for clip in clips)
    audio_seconds = sum(len(clip) for clip in clips) / RATE
    runs = [(batch_size, "length-bucketed") for batch_size in batch_sizes]
    runs.append((batch_sizes[len(batch_sizes) // 2], "input order"))
    rows = []
    for batch_size, order in runs:
        if order == "input order":
            make_run = partial(run_in_input_order, extractor=extractor, waveforms=clips, batch_size=batch_size)
        else:
            make_run = partial(run_embed, waveforms=clips, batch_size=batch_size)
        for row in measure_configurations(configs, make_run, repeats, useful, 0, batch_size=batch_size, order=order):
            row["audio_seconds_per_second"] = audio_seconds / row["seconds_median"]
            rows.append(row)
    return rows


def measure_chunk_batches(configs, chunk_counts, repeats):
    """The encoder alone on full chunks (no padding, no mask), by the number of chunks in one pass."""
    config = configs["fp32"][0].config
    rows = []
    for count in chunk_counts:
        chunks = torch.randn(count, config.num_mel_bins, config.unit_frames, device=configs["fp32"][0].device)
        make_run = partial(run_chunks, chunks=chunks)
        rows += measure_configurations(configs, make_run, repeats, warmup=2, chunks=count)
    return rows


def measure_long_recordings(args, minutes, dtypes):
    """Time and peak memory of `embed()` on one recording per length and dtype, each in a fresh process."""
    rows = []
    for length in minutes:
        for dtype_name in dtypes:
            command = [sys.executable, __file__, "--output", args.output, "--long-recording", str(length)]
            command += ["--dtype", dtype_name] + (["--quick"] if args.quick else [])
            command += ["--model", args.model] if args.model else []
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.splitlines()[-1]))
    return rows


def long_recording_worker(model, dtype, dtype_name, minutes):
    """
    Embeds one noise recording of `minutes` with `model` (the only model left in the process); prints its time and
    the process's peak memory after a 10-s warm-up and over the recording.
    """
    reset_peak_memory(model.device)  # quantizing held the original and its copy at once: not the recording's cost
    recording = noise_clips(np.random.default_rng(0), [minutes * 60])[0]
    run_embed(model, dtype, recording[: 10 * RATE], 1)  # warm-up: first-call costs are not the recording's
    before = peak_memory_mb(model.device)
    start = time.perf_counter()
    run_embed(model, dtype, recording, 1)
    seconds = time.perf_counter() - start
    row = {"dtype": dtype_name, "minutes": minutes, "seconds": seconds}
    row["audio_seconds_per_second"] = 60 * minutes / seconds
    row.update(peak_memory_before_mb=before, peak_memory_mb=peak_memory_mb(model.device))
    print(json.dumps(row))


def dtype_names(device):
    """
    What to compare: fp32, bf16 weights (not on a CPU that emulates bf16), and on a CPU the packed fp32 copy (with
    oneDNN) and int8, on a GPU fp16.
    """
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"]
    packed = ["fp32 packed"] if packs_weights(torch.float32) else []  # PyTorch with oneDNN
    return ["fp32", *packed] + (["bf16"] if cpu_has_bf16_kernels() else []) + ["int8"]


def configuration(model, name):
    """(model to run, autocast dtype) for one of `dtype_names` or "bf16 autocast"."""
    if name in ("int8", "bf16", "fp32 packed"):
        return quantize(model, name.split()[0]), None
    return model, None if name == "fp32" else MATMUL_DTYPES[reference_dtype(name)]


def configurations(model):
    return {name: configuration(model, name) for name in dtype_names(model.device)}


def measure(model, settings, repeats, compile=False):
    device = model.device
    configs = configurations(model)
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    rng = np.random.default_rng(0)
    clips = noise_clips(rng, [settings["clip_seconds"]] * max(settings["batch_sizes"]))
    mixed = noise_clips(rng, rng.uniform(*settings["mixed_range"], size=settings["mixed_count"]))
    with_autocast = configs
    if "bf16" in configs:  # autocast beside bf16
        autocast = {"bf16 autocast": configuration(model, "bf16 autocast")}
        with_autocast = {name: configs[name] for name in ("fp32", "bf16")} | autocast | configs
    end_to_end = measure_end_to_end(
        with_autocast, extractor, clips, settings["clip_seconds"], settings["batch_sizes"], repeats
    )
    if compile:
        batch_sizes = settings["batch_sizes"]
        end_to_end += measure_compiled(configs, extractor, clips, settings["clip_seconds"], batch_sizes, repeats)
    onnx_runtime = measure_onnx_runtime(
        model, extractor, clips, settings["clip_seconds"], settings["onnx_batch_sizes"], repeats
    )
    return {
        "repeats": repeats,
        "feature_extraction": measure_feature_extraction(extractor, clips, settings["clip_seconds"], device, repeats),
        "end_to_end": end_to_end,
        "onnx_runtime": onnx_runtime,
        "mixed_lengths": {
            "clips": settings["mixed_count"],
            "seconds_range": list(settings["mixed_range"]),
            "total_audio_seconds": sum(len(clip) for clip in mixed) / RATE,
            "rows": measure_mixed_lengths(configs, extractor, mixed, settings["mixed_batch_sizes"], repeats),
        },
        "chunk_batches": measure_chunk_batches(configs, settings["chunk_counts"], repeats),
        "peak_memory_mb": peak_memory_mb(device),
    }


def percent(row, reference):
    """A same-moment fraction as 'median% (best%)', marked invalid above 100%; a dash where there is no reference."""
    if f"fraction_of_{reference}" not in row:
        return "—"
    median, best = row[f"fraction_of_{reference}"], row[f"fraction_of_{reference}_best"]
    flag = " **invalid**" if max(median, best) > 1 else ""
    return f"{median:.0%} ({best:.0%}){flag}"


def rate(row, reference):
    return f"{row[f'{reference}_matmul_flops'] / 1e12:.3f}" if f"{reference}_matmul_flops" in row else "—"


def speedup(row):
    return f"{row['speedup_over_fp32']:.2f}x" if "speedup_over_fp32" in row else "1x"


def summary(report):
    """One line per dtype: speed against fp32 and bf16, fraction of the model-shape rate, cosine to fp32."""
    lines = []
    by_dtype = {}
    for row in report["end_to_end"] + [row for row in report["onnx_runtime"]["rows"] if row["dtype"] != "fp32"]:
        by_dtype.setdefault(row["dtype"], []).append(row)
    for dtype, rows in by_dtype.items():
        parts = []
        for row in rows:
            part = f"batch {row['batch_size']}: {row['clips_per_second']:.2f} clips/s"
            if "fraction_of_model-shape" in row:
                part += f", {row['fraction_of_model-shape']:.0%} of the model-shape matmul rate"
            others = [other for other in ("fp32", "bf16") if f"speedup_over_{other}" in row]
            part += "".join(f", {row[f'speedup_over_{other}']:.2f}x {other}" for other in others)
            parts.append(part)
        cosine = min(row["cosine_to_fp32"] for row in rows)
        lines.append(f"- **{dtype}**: " + "; ".join(parts) + f"; cosine to fp32 >= {cosine:.5f}.")
    invalid = sum(
        1
        for row in report["end_to_end"]
        + report["mixed_lengths"]["rows"]
        + report["chunk_batches"]
        + report["onnx_runtime"]["rows"]
        for reference in ("model-shape", "square")
        if row.get(f"fraction_of_{reference}", 0) > 1 or row.get(f"fraction_of_{reference}_best", 0) > 1
    )
    lines.append(f"- Fractions above 100% (invalid, the machine changed speed within a round): {invalid}.")
    return lines


def onnx_runtime_table(onnx_runtime, clip_seconds):
    if not onnx_runtime["rows"]:
        return [onnx_runtime["note"]]
    lines = [
        f"ONNX Runtime end to end, {clip_seconds:g}-s clips (features in PyTorch; CPU, "
        f"{onnx_runtime['intra_op_threads']} intra-op threads), interleaved with eager fp32 in the same rounds; "
        "x eager fp32 is the median same-moment speed-up (ORT's kernels are not torch's: matmul fractions for eager "
        "fp32 only):",
        "",
        "| runtime | batch | clips/s | audio s/s | achieved TFLOP/s | fraction (model-shape) | x eager fp32 | "
        "cosine to fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in onnx_runtime["rows"]:
        lines.append(
            f"| {'eager fp32' if row['dtype'] == 'fp32' else row['dtype']} | {row['batch_size']} | "
            f"{row['clips_per_second']:.2f} | {row['audio_seconds_per_second']:.1f} | "
            f"{row['achieved_flops'] / 1e12:.3f} | {percent(row, 'model-shape')} | {speedup(row)} | "
            f"{row['cosine_to_fp32']:.6f} |"
        )
    return lines


def markdown(report):
    extraction = report["feature_extraction"]
    mixed = report["mixed_lengths"]
    quick = ["**Quick check (`--quick`): a small model, 2 rounds; not a measurement to report.**", ""]
    lines = [
        *(quick if report["quick"] else []),
        f"Machine: {report['machine']}; torch {report['torch']}, transformers {report['transformers']}; "
        f"{report['date']}; model: {report['model']} ({report['parameters'] / 1e6:.1f} M parameters); "
        f"{report['repeats']} interleaved rounds.",
        "",
        "Summary (end to end, median same-moment ratios):",
        "",
        *summary(report),
        "",
        f"Feature extraction ({extraction['clips']} x {extraction['clip_seconds']:g} s clips): "
        f"{extraction['audio_seconds_per_second']:,.0f} audio seconds per second.",
        "",
        f"End to end, {extraction['clip_seconds']:g}-s clips. Fractions: median over rounds (ratio of best times).",
        "",
        "| dtype | batch | clips/s | audio s/s | achieved TFLOP/s | model-shape matmul TFLOP/s | fraction | "
        "square matmul TFLOP/s | fraction | x fp32 | cosine to fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["end_to_end"]:
        lines.append(
            f"| {row['dtype']} | {row['batch_size']} | {row['clips_per_second']:.2f} | "
            f"{row['audio_seconds_per_second']:.1f} | {row['achieved_flops'] / 1e12:.3f} | "
            f"{rate(row, 'model-shape')} | {percent(row, 'model-shape')} | {rate(row, 'square')} | "
            f"{percent(row, 'square')} | {speedup(row)} | "
            f"{row['cosine_to_fp32']:.6f} |"
        )
    lines += ["", *onnx_runtime_table(report["onnx_runtime"], extraction["clip_seconds"])]
    lines += [
        "",
        f"End to end, {mixed['clips']} clips of {mixed['seconds_range'][0]:g}-{mixed['seconds_range'][1]:g} s "
        f"({mixed['total_audio_seconds']:.0f} s of audio); useful TFLOP/s counts no padding:",
        "",
        "| dtype | batch | order | audio s/s | useful TFLOP/s | fraction (model-shape) | fraction (square) | x fp32 | "
        "padded FLOPs | cosine to fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in mixed["rows"]:
        lines.append(
            f"| {row['dtype']} | {row['batch_size']} | {row['order']} | {row['audio_seconds_per_second']:.1f} | "
            f"{row['achieved_flops'] / 1e12:.3f} | {percent(row, 'model-shape')} | {percent(row, 'square')} | "
            f"{speedup(row)} | {row['padded_flop_share']:.0%} | {row['cosine_to_fp32']:.6f} |"
        )
    lines += [
        "",
        "Encoder alone on full chunks (no padding), by chunks per pass:",
        "",
        "| dtype | chunks | achieved TFLOP/s | fraction (model-shape) | fraction (square) | x fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["chunk_batches"]:
        lines.append(
            f"| {row['dtype']} | {row['chunks']} | {row['achieved_flops'] / 1e12:.3f} | "
            f"{percent(row, 'model-shape')} | {percent(row, 'square')} | {speedup(row)} |"
        )
    if report["long_recordings"]:
        lines += [
            "",
            "One long recording through `embed()`, each in a fresh process holding only the model it runs (a bf16 or "
            "int8 copy replaces the fp32 model); peak resident memory of the process from then on, 'before' "
            "over a 10-s warm-up:",
            "",
            "| dtype | minutes | seconds | audio s/s | peak memory before (MB) | peak memory (MB) |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["long_recordings"]:
            lines.append(
                f"| {row['dtype']} | {row['minutes']:g} | {row['seconds']:.1f} | "
                f"{row['audio_seconds_per_second']:.1f} | {row['peak_memory_before_mb']:.0f} | "
                f"{row['peak_memory_mb']:.0f} |"
            )
    lines += ["", f"Peak memory: {report['peak_memory_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


def build_model(args):
    torch.manual_seed(0)
    if args.model:
        model, name = RespM2DModel.from_pretrained(args.model), args.model
    elif args.quick:
        config = RespM2DConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        model, name = RespM2DModel(config), "small (2 x 64, random weights)"
    else:
        model, name = RespM2DModel(RespM2DConfig()), "ViT-Base 80x608p16x16 (random weights)"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.eval().to(device), name


QUICK = {
    "batch_sizes": (1, 2),
    "onnx_batch_sizes": (1, 2),
    "clip_seconds": 2.0,
    "mixed_count": 6,
    "mixed_range": (0.5, 8.0),
    "mixed_batch_sizes": (1, 2),
    "chunk_counts": (2, 4),
    "long_minutes": (0.2,),
}
# About 46 minutes on the 2-core CI-class machine with 7 rounds (`--repeats 7`), long recordings included.
FULL = {
    "batch_sizes": (1, 8),
    "onnx_batch_sizes": (1, 8),
    "clip_seconds": 10.0,
    "mixed_count": 16,
    "mixed_range": (0.5, 30.0),
    "mixed_batch_sizes": (8,),
    "chunk_counts": (8, 32),
    "long_minutes": (1, 10, 60),
}

# A GPU reaches its matmul rate only with many rows: larger batches and chunk passes (minutes on an H100-class GPU).
GPU_ADDITIONS = {"batch_sizes": (1, 8, 64), "mixed_batch_sizes": (8, 64), "chunk_counts": (8, 32, 256, 1024)}


def run_settings(quick, device):
    """QUICK, FULL, or FULL with the larger GPU batches on a GPU."""
    if quick:
        return QUICK
    return FULL | GPU_ADDITIONS if device.type == "cuda" else FULL


def allocator_settings():
    """The environment that changes the C memory allocator ('NAME=value'): it changes CPU speed (see the README)."""
    return [f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith(ALLOCATOR_VARIABLES)]


def yes_no(flag):
    return "unknown" if flag is None else "yes" if flag else "no"


def machine_description(device):
    description = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        return f"{description}, {torch.cuda.get_device_name()}"
    description += f", PyTorch CPU kernels {torch.backends.cpu.get_cpu_capability()}"
    bf16, vnni = cpu_has_bf16_kernels(), getattr(torch.cpu, "_is_vnni_supported", lambda: None)()
    description += f", native bf16: {yes_no(bf16)}, AVX-512 VNNI: {yes_no(vnni)}"
    description += f", allocator: {', '.join(allocator_settings()) or 'default'}"
    return description + ("" if bf16 else " (bf16 emulated: no bf16 rows)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a converted folder (default: ViT-Base 80x608p16x16 with random weights)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--quick", action="store_true", help="a small model, few rounds, short recordings (CI)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5; 2 with --quick)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure fp32 and bf16 with torch.compile (frozen weights; minutes of compiling)",
    )
    parser.add_argument("--no-long-recordings", action="store_true", help="skip the long-recording rows")
    parser.add_argument("--long-recording", type=float, help=argparse.SUPPRESS)  # one worker process
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model, name = build_model(args)
    if args.long_recording:
        model, dtype = configuration(model, args.dtype)  # a bf16 or int8 copy replaces the float32 model, as in use
        long_recording_worker(model, dtype, args.dtype, args.long_recording)
        return 0
    settings = run_settings(args.quick, device=model.device)
    repeats = 2 if args.quick else args.repeats
    device = model.device
    report = {
        "machine": machine_description(device),
        "device": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": date.today().isoformat(),
        "quick": args.quick,
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        **measure(model, settings, repeats, compile=args.compile),
        "long_recordings": []
        if args.no_long_recordings
        else measure_long_recordings(args, settings["long_minutes"], dtype_names(device)),
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "speed.json").write_text(json.dumps(report, indent=2))
    (output / "speed.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
