"""Fine-tune a small M2D classifier end to end on a dataset this script makes itself.

Two classes a model can tell apart by their spectrum: low-band noise ("breath") and high-band tones ("wheeze"),
written as 16 kHz WAV files in `<workdir>/recordings/<class>/`, the folder layout `resp-hf finetune` reads.

    python examples/finetune_synthetic.py WORKDIR [--encoder CONVERTED_FOLDER] [--epochs 4]

Without `--encoder`, a small random encoder is created (a real run starts from a converted checkpoint).
"""

import argparse
from pathlib import Path

from transformers import pipeline

from resp_hf.cli import main as resp_hf
from resp_hf.synthetic import save_small_encoder, write_two_class_recordings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--encoder", help="a converted encoder folder (default: a small random one)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    recordings = write_two_class_recordings(args.workdir / "recordings", per_class=24)
    encoder = args.encoder or save_small_encoder(args.workdir / "encoder")
    output = args.workdir / "classifier"
    code = resp_hf(
        [
            "finetune",
            "--model_name_or_path",
            str(encoder),
            "--dataset",
            str(recordings),
            "--output_dir",
            str(output),
            "--num_train_epochs",
            str(args.epochs),
            "--learning_rate",
            "1e-3",
            "--per_device_train_batch_size",
            "8",
            "--seed",
            "0",
            "--overwrite_output_dir",  # a rerun replaces the classifier of the previous one
        ]
    )
    if code:
        raise SystemExit(code)
    classify = pipeline("audio-classification", model=str(output), trust_remote_code=True)
    for name in ("breath", "wheeze"):
        path = recordings / name / f"{name}_000.wav"
        print(f"{path.name}: {classify(str(path))[0]}")


if __name__ == "__main__":
    main()
