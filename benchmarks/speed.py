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


class TokenCounter:
    """Records the token count of every chunk the encoder computes (padding included), via the embeddings."""

    def __init__(self, model):
        self.tokens = []
        self.handle = model.embeddings.register_forward_hook(self.record)

    def record(self, module, args, output):
        self.tokens += [output.shape[1]] * output.shape[0]

    def remove(self):
        self.handle.remove()


def run_encoder(model, features, dtype):
    with torch.no_grad(), torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
        return model(**features).pooler_output


def run_chunks(model, chunks, patches, dtype):
    with torch.no_grad(), torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
        return model.encode_group(chunks, patches)


def run_end_to_end(model, extractor, waveforms, dtype):
    return run_encoder(model, extractor(waveforms, sampling_rate=RATE, device=model.device), dtype)


def run_in_input_order(model, extractor, waveforms, batch_size, dtype):
    """End to end over consecutive slices of `waveforms`, without `embed`'s length bucketing."""
    for start in range(0, len(waveforms), batch_size):
        run_end_to_end(model, extractor, waveforms[start : start + batch_size], dtype)


def noise_clips(rng, seconds):
    return [(0.1 * rng.standard_normal(int(s * RATE))).astype(np.float32) for s in seconds]


def measure_feature_extraction(extractor, clips, clip_seconds, device, repeats):
    seconds = best_time(lambda: extractor(clips, sampling_rate=RATE, device=device), repeats)
    return {
        "clips": len(clips),
        "clip_seconds": clip_seconds,
        "audio_seconds_per_second": len(clips) * clip_seconds / seconds,
    }


def throughput_row(dtype_name, batch_size, clips, audio_seconds, seconds, flops, peak, **extra):
    achieved = flops / seconds
    return {
        "dtype": dtype_name,
        "batch_size": batch_size,
        "clips_per_second": clips / seconds,
        "audio_seconds_per_second": audio_seconds / seconds,
        "achieved_flops": achieved,
        "attainable_matmul_flops": peak,
        "fraction_of_attainable": achieved / peak,
        **extra,
    }


def measure_end_to_end(model, extractor, clips, clip_seconds, batch_sizes, dtypes, peaks, repeats):
    """Waveform-to-embedding throughput of equal-length clips, and the encoder alone, per dtype and batch size."""
    flops_per_clip = encoder_flops(model.config, chunk_tokens(model.config, clip_seconds))
    rows = []
    for dtype_name, dtype in dtypes.items():
        for batch_size in batch_sizes:
            raw = clips[:batch_size]
            features = extractor(raw, sampling_rate=RATE, device=model.device)
            encoder_seconds = best_time(partial(run_encoder, model, features, dtype), repeats)
            seconds = best_time(partial(run_end_to_end, model, extractor, raw, dtype), repeats)
            rows.append(
                throughput_row(
                    dtype_name,
                    batch_size,
                    batch_size,
                    batch_size * clip_seconds,
                    seconds,
                    flops_per_clip * batch_size,
                    peaks[dtype_name],
                    encoder_seconds=encoder_seconds,
                    end_to_end_seconds=seconds,
                )
            )
    return rows


def measure_compiled(model, extractor, clips, clip_seconds, batch_size, dtypes, peaks, repeats):
    """The end-to-end measurement at one batch size with the encoder blocks compiled by `torch.compile`."""
    flops = encoder_flops(model.config, chunk_tokens(model.config, clip_seconds)) * batch_size
    eager = model.encoder
    model.encoder = torch.compile(eager)
    rows = []
    try:
        for dtype_name, dtype in dtypes.items():
            run = partial(run_end_to_end, model, extractor, clips[:batch_size], dtype)
            seconds = best_time(run, repeats, warmup=2)
            rows.append(
                throughput_row(
                    f"{dtype_name} (compiled)",
                    batch_size,
                    batch_size,
                    batch_size * clip_seconds,
                    seconds,
                    flops,
                    peaks[dtype_name],
                    encoder_seconds=None,
                    end_to_end_seconds=seconds,
                )
            )
    finally:
        model.encoder = eager
    return rows


def measure_mixed_lengths(model, extractor, clips, batch_sizes, dtypes, peaks, repeats):
    """
    Throughput on clips of mixed lengths through `embed` (length bucketing), and in input order at the middle batch
    size. `achieved_flops` counts the useful encoder FLOPs (no padding); `padded_flop_share` is the part of the
    encoder FLOPs spent on the padding of shorter last chunks.
    """
    audio_seconds = sum(len(clip) for clip in clips) / RATE
    useful = sum(encoder_flops(model.config, chunk_tokens(model.config, len(clip) / RATE)) for clip in clips)
    runs = [(batch_size, "length-bucketed") for batch_size in batch_sizes]
    runs.append((batch_sizes[len(batch_sizes) // 2], "input order"))
    rows = []
    for dtype_name, dtype in dtypes.items():
        for batch_size, order in runs:
            if order == "input order":
                run = partial(run_in_input_order, model, extractor, clips, batch_size, dtype)
            else:
                run = partial(
                    model.embed, clips, sampling_rate=RATE, batch_size=batch_size, progress=False, autocast_dtype=dtype
                )
            counter = TokenCounter(model)
            run()
            counter.remove()
            computed = encoder_flops(model.config, counter.tokens)
            seconds = best_time(run, repeats, warmup=0)
            rows.append(
                throughput_row(
                    dtype_name,
                    batch_size,
                    len(clips),
                    audio_seconds,
                    seconds,
                    useful,
                    peaks[dtype_name],
                    order=order,
                    padded_flop_share=1 - useful / computed,
                )
            )
    return rows


def measure_chunk_batches(model, chunk_counts, dtypes, peaks, repeats):
    """The encoder alone on full chunks (no padding, no mask), by the number of chunks in one pass."""
    config = model.config
    tokens = 1 + config.num_frequency_patches * config.time_patches_per_chunk
    rows = []
    for dtype_name, dtype in dtypes.items():
        for count in chunk_counts:
            chunks = torch.randn(count, config.num_mel_bins, config.unit_frames, device=model.device)
            patches = torch.full((count,), config.time_patches_per_chunk, device=model.device)
            seconds = best_time(partial(run_chunks, model, chunks, patches, dtype), repeats, warmup=2)
            achieved = encoder_flops(config, [tokens] * count) / seconds
            rows.append(
                {
                    "dtype": dtype_name,
                    "chunks": count,
                    "achieved_flops": achieved,
                    "attainable_matmul_flops": peaks[dtype_name],
                    "fraction_of_attainable": achieved / peaks[dtype_name],
                }
            )
    return rows


def measure(
    model, batch_sizes, clip_seconds, repeats, dtypes, mixed_count, mixed_range, chunk_counts, compile_batch=None
):
    device = model.device
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    rng = np.random.default_rng(0)
    clips = noise_clips(rng, [clip_seconds] * max(batch_sizes))
    mixed = noise_clips(rng, rng.uniform(*mixed_range, size=mixed_count))
    peak_size = 2048 if device.type == "cpu" else 8192
    peaks = {name: matmul_rate(device, dtype or torch.float32, peak_size, repeats) for name, dtype in dtypes.items()}
    end_to_end = measure_end_to_end(model, extractor, clips, clip_seconds, batch_sizes, dtypes, peaks, repeats)
    if compile_batch:
        end_to_end += measure_compiled(model, extractor, clips, clip_seconds, compile_batch, dtypes, peaks, repeats)
    return {
        "feature_extraction": measure_feature_extraction(extractor, clips, clip_seconds, device, repeats),
        "end_to_end": end_to_end,
        "mixed_lengths": {
            "clips": mixed_count,
            "seconds_range": list(mixed_range),
            "total_audio_seconds": sum(len(clip) for clip in mixed) / RATE,
            "rows": measure_mixed_lengths(model, extractor, mixed, batch_sizes, dtypes, peaks, repeats),
        },
        "chunk_batches": measure_chunk_batches(model, chunk_counts, dtypes, peaks, repeats),
        "peak_memory_mb": peak_memory_mb(device),
    }


def markdown(report):
    extraction = report["feature_extraction"]
    mixed = report["mixed_lengths"]
    lines = [
        f"Machine: {report['machine']}; torch {report['torch']}, transformers {report['transformers']}; "
        f"{report['date']}; model: {report['model']} ({report['parameters'] / 1e6:.1f} M parameters).",
        "",
        f"Feature extraction ({extraction['clips']} x {extraction['clip_seconds']:g} s clips): "
        f"{extraction['audio_seconds_per_second']:,.0f} audio seconds per second.",
        "",
        f"End to end, {extraction['clip_seconds']:g}-s clips:",
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
    lines += [
        "",
        f"End to end, {mixed['clips']} clips of {mixed['seconds_range'][0]:g}-{mixed['seconds_range'][1]:g} s "
        f"({mixed['total_audio_seconds']:.0f} s of audio); useful TFLOP/s counts no padding:",
        "",
        "| dtype | batch | order | audio s/s | useful TFLOP/s | fraction | padded FLOPs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in mixed["rows"]:
        lines.append(
            f"| {row['dtype']} | {row['batch_size']} | {row['order']} | {row['audio_seconds_per_second']:.1f} | "
            f"{row['achieved_flops'] / 1e12:.3f} | {row['fraction_of_attainable']:.0%} | "
            f"{row['padded_flop_share']:.0%} |"
        )
    lines += [
        "",
        "Encoder alone on full chunks (no padding), by chunks per pass:",
        "",
        "| dtype | chunks | achieved TFLOP/s | fraction |",
        "|---|---|---|---|",
    ]
    for row in report["chunk_batches"]:
        lines.append(
            f"| {row['dtype']} | {row['chunks']} | {row['achieved_flops'] / 1e12:.3f} | "
            f"{row['fraction_of_attainable']:.0%} |"
        )
    lines += ["", f"Peak memory: {report['peak_memory_mb']:.0f} MB."]
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
            (1, 2) if quick else (1, 8, 32),
            2.0 if quick else 10.0,
            1 if quick else args.repeats,
            dtypes,
            6 if quick else 32,
            (0.5, 8.0) if quick else (0.5, 30.0),
            (2, 4) if quick else (8, 16, 32, 64),
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
