"""Fine-tune a small M2D classifier end to end on a dataset this script makes itself.

Two classes a model can tell apart by their spectrum: low-band noise ("breath") and high-band tones ("wheeze"),
written as 16 kHz WAV files in `<workdir>/recordings/<class>/`, the folder layout `resp-hf finetune` reads.

    python examples/finetune_synthetic.py WORKDIR [--encoder CONVERTED_FOLDER] [--epochs 4]

Without `--encoder`, a small random encoder is created (a real run starts from a converted checkpoint).
"""

import argparse
from pathlib import Path

import numpy as np
import soundfile
import torch
from transformers import pipeline

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel
from resp_hf.training.finetune import main as finetune_main

RATE = 16000


def breath(rng, seconds):
    """Noise low-passed below about 600 Hz."""
    noise = rng.standard_normal(int(seconds * RATE))
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(noise.size, 1 / RATE) > 600] = 0
    return np.fft.irfft(spectrum, noise.size)


def wheeze(rng, seconds):
    """A tone between 2 and 4 kHz with a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    return np.sin(2 * np.pi * rng.uniform(2000, 4000) * t) + 0.1 * rng.standard_normal(t.size)


def make_recordings(folder, per_class=24, seed=0):
    rng = np.random.default_rng(seed)
    for name, make in (("breath", breath), ("wheeze", wheeze)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            audio = make(rng, rng.uniform(1.0, 2.5))
            soundfile.write(folder / name / f"{name}_{i:03d}.wav", 0.3 * audio / np.abs(audio).max(), RATE)
    return folder


def make_small_encoder(folder):
    torch.manual_seed(0)
    config = RespM2DConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    RespM2DModel(config).save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(config).save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--encoder", help="a converted encoder folder (default: a small random one)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    recordings = make_recordings(args.workdir / "recordings")
    encoder = args.encoder or make_small_encoder(args.workdir / "encoder")
    output = args.workdir / "classifier"
    finetune_main([
        "--model_name_or_path", str(encoder),
        "--dataset", str(recordings),
        "--output_dir", str(output),
        "--num_train_epochs", str(args.epochs),
        "--learning_rate", "1e-3",
        "--per_device_train_batch_size", "8",
        "--seed", "0",
    ])
    classify = pipeline("audio-classification", model=str(output), trust_remote_code=True)
    for name in ("breath", "wheeze"):
        path = recordings / name / f"{name}_000.wav"
        print(f"{path.name}: {classify(str(path))[0]}")


if __name__ == "__main__":
    main()
