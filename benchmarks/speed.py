"""Speed of resp_hf: feature extraction, end-to-end embedding and the encoder's achieved FLOP/s against the machine.

    python benchmarks/speed.py --output benchmarks/results            # ViT-Base (random weights), full run
    python benchmarks/speed.py --model ./resp-m2d --output out         # a converted checkpoint
    python benchmarks/speed.py --quick --output out                    # seconds: a small model, for CI

Writes `speed.json` and `speed.md`. Timings are the best of several repeats after a warm-up; the roofline is a large
matrix product measured in the same run, in the same dtype.
"""

import argparse
import json
import platform
import resource
import time
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import torch
import transformers

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel

RATE = 16000


def best_time(function, repeats, warmup=1):
    """Best wall time of `function()` over `repeats` runs after `warmup` runs (GPU work is synchronized)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_rate(device, dtype, size, repeats):
    """Attainable FLOP/s of a square matrix product of `size` in `dtype`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = best_time(lambda: a @ b, repeats)
    return 2 * size**3 / seconds


def encoder_flops(config, chunk_tokens):
    """Multiply-add FLOPs (x2) of the encoder's matrix products for chunks of the given token counts (CLS included)."""
    width, depth = config.hidden_size, config.num_hidden_layers
    patch = config.patch_size[0] * config.patch_size[1]
    total = 0
    for tokens in chunk_tokens:
        per_layer = (
            2 * tokens * (4 * width * width + 2 * width * config.intermediate_size) + 4 * tokens * tokens * width
        )
        total += depth * per_layer + 2 * (tokens - 1) * patch * width
    return total


def chunk_tokens(config, seconds):
    """Token counts of the chunks of one clip of `seconds`, as the encoder cuts it."""
    frames = 1 + int(seconds * RATE) // (config.hop_length * RATE // config.sampling_rate)
    bands, unit, patch = config.num_frequency_patches, config.unit_frames, config.patch_size[1]
    padded = -(-frames // patch) * patch
    columns = [min(unit, padded - start) // patch for start in range(0, frames, unit)]
    return [1 + bands * c for c in columns if c]


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_encoder(model, features, device, dtype):
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return model(**features).pooler_output


def run_end_to_end(model, extractor, waveforms, device, dtype):
    features = extractor(waveforms, sampling_rate=RATE, device=device)
    return run_encoder(model, features, device, dtype)


def measure(model, device, batch_sizes, clip_seconds, repeats, dtypes, mixed_count, mixed_range, compile_batch=None):
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    rng = np.random.default_rng(0)
    results = {"feature_extraction": {}, "end_to_end": [], "mixed_lengths": {}}

    clips = [(0.1 * rng.standard_normal(int(clip_seconds * RATE))).astype(np.float32) for _ in range(max(batch_sizes))]
    seconds = best_time(lambda: extractor(clips, sampling_rate=RATE, device=device), repeats)
    results["feature_extraction"] = {
        "clips": len(clips),
        "clip_seconds": clip_seconds,
        "audio_seconds_per_second": len(clips) * clip_seconds / seconds,
    }

    flops_per_clip = encoder_flops(model.config, chunk_tokens(model.config, clip_seconds))
    for dtype_name, dtype in dtypes.items():
        peak = matmul_rate(
            device, dtype if dtype is not None else torch.float32, 2048 if device.type == "cpu" else 8192, repeats
        )
        for batch_size in batch_sizes:
            batch = extractor(clips[:batch_size], sampling_rate=RATE, device=device)
            raw = clips[:batch_size]

            encoder_seconds = best_time(partial(run_encoder, model, batch, device, dtype), repeats)
            total_seconds = best_time(partial(run_end_to_end, model, extractor, raw, device, dtype), repeats)
            achieved = flops_per_clip * batch_size / total_seconds
            results["end_to_end"].append(
                {
                    "dtype": dtype_name,
                    "batch_size": batch_size,
                    "clips_per_second": batch_size / total_seconds,
                    "audio_seconds_per_second": batch_size * clip_seconds / total_seconds,
                    "encoder_seconds": encoder_seconds,
                    "end_to_end_seconds": total_seconds,
                    "achieved_flops": achieved,
                    "attainable_matmul_flops": peak,
                    "fraction_of_attainable": achieved / peak,
                }
            )

    if compile_batch:  # the same end-to-end measurement with the encoder blocks compiled by torch.compile
        eager = model.encoder
        model.encoder = torch.compile(eager)
        raw = clips[:compile_batch]
        for dtype_name, dtype in dtypes.items():
            total_seconds = best_time(partial(run_end_to_end, model, extractor, raw, device, dtype), repeats, warmup=2)
            row = next(
                r for r in results["end_to_end"] if r["dtype"] == dtype_name and r["batch_size"] == compile_batch
            )
            achieved = flops_per_clip * compile_batch / total_seconds
            results["end_to_end"].append(
                {
                    **row,
                    "dtype": f"{dtype_name} (compiled)",
                    "clips_per_second": compile_batch / total_seconds,
                    "audio_seconds_per_second": compile_batch * clip_seconds / total_seconds,
                    "end_to_end_seconds": total_seconds,
                    "encoder_seconds": None,
                    "achieved_flops": achieved,
                    "fraction_of_attainable": achieved / row["attainable_matmul_flops"],
                }
            )
        model.encoder = eager

    lengths = rng.uniform(*mixed_range, size=mixed_count)
    mixed = [(0.1 * rng.standard_normal(int(s * RATE))).astype(np.float32) for s in lengths]
    batch_size = max(batch_sizes)
    bucketed = best_time(lambda: model.embed(mixed, sampling_rate=RATE, batch_size=batch_size, progress=False), repeats)

    def in_input_order():
        with torch.no_grad():
            for start in range(0, len(mixed), batch_size):
                model(**extractor(mixed[start : start + batch_size], sampling_rate=RATE, device=device))

    unsorted = best_time(in_input_order, repeats)
    results["mixed_lengths"] = {
        "clips": mixed_count,
        "seconds_range": list(mixed_range),
        "total_audio_seconds": float(lengths.sum()),
        "bucketed_audio_seconds_per_second": float(lengths.sum()) / bucketed,
        "input_order_audio_seconds_per_second": float(lengths.sum()) / unsorted,
    }
    results["peak_memory_mb"] = peak_memory_mb(device)
    return results


def markdown(report):
    extraction = report["feature_extraction"]
    lines = [
        f"Machine: {report['machine']}; torch {report['torch']}, transformers {report['transformers']}; "
        f"{report['date']}; model: {report['model']} ({report['parameters'] / 1e6:.1f} M parameters).",
        "",
        f"Feature extraction ({extraction['clips']} x {extraction['clip_seconds']:g} s clips): "
        f"{extraction['audio_seconds_per_second']:,.0f} audio seconds per second.",
        "",
        "| dtype | batch | clips/s | audio s/s | achieved TFLOP/s | attainable matmul TFLOP/s | fraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["end_to_end"]:
        lines.append(
            f"| {row['dtype']} | {row['batch_size']} | {row['clips_per_second']:.2f} | "
            f"{row['audio_seconds_per_second']:.1f} | {row['achieved_flops'] / 1e12:.3f} | "
            f"{row['attainable_matmul_flops'] / 1e12:.3f} | {row['fraction_of_attainable']:.0%} |"
        )
    mixed = report["mixed_lengths"]
    lines += [
        "",
        f"Mixed lengths ({mixed['clips']} clips of {mixed['seconds_range'][0]:g}-{mixed['seconds_range'][1]:g} s): "
        f"{mixed['bucketed_audio_seconds_per_second']:.1f} audio s/s with length bucketing (`embed`), "
        f"{mixed['input_order_audio_seconds_per_second']:.1f} in input order. "
        f"Peak memory: {report['peak_memory_mb']:.0f} MB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a converted folder (default: ViT-Base 80x608p16x16 with random weights)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--quick", action="store_true", help="a small model and few repeats (CI)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure batch 8 with torch.compile (slow start)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if args.model:
        model, name = RespM2DModel.from_pretrained(args.model), args.model
    elif args.quick:
        config = RespM2DConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        model, name = RespM2DModel(config), "small (2 x 64, random weights)"
    else:
        model, name = RespM2DModel(RespM2DConfig()), "ViT-Base 80x608p16x16 (random weights)"
    model = model.eval().to(device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    quick = args.quick
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "device": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": date.today().isoformat(),
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        **measure(
            model,
            device,
            (1, 2) if quick else (1, 8, 32),
            2.0 if quick else 10.0,
            1 if quick else args.repeats,
            dtypes,
            6 if quick else 32,
            (0.5, 3.0) if quick else (0.5, 30.0),
            compile_batch=(2 if quick else 8) if args.compile else None,
        ),
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "speed.json").write_text(json.dumps(report, indent=2))
    (output / "speed.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
