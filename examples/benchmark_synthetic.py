"""Run the OPERA linear-probe benchmark on a small dataset this script makes itself.

    python examples/benchmark_synthetic.py WORKDIR [--model CONVERTED_FOLDER] [--layers all] [--seeds 0,1,2,3,4]

Two spectrally different classes (low-band noise vs 2-4 kHz tones) in train/validation/test folders, saved as a
DatasetDict and evaluated with `resp-hf benchmark --dataset`. Without `--model`, a small random encoder is used.
For OPERA tasks, pass `--tasks T7,T10 --opera-root OPERA` to `resp-hf benchmark` instead.
"""

import argparse
from pathlib import Path

from resp_hf.cli import main as cli_main
from resp_hf.data import load_audio_folder
from resp_hf.synthetic import save_small_encoder, write_two_class_recordings


def make_dataset(folder):
    for seed, (split, per_class) in enumerate((("train", 48), ("validation", 16), ("test", 16))):
        write_two_class_recordings(folder / "recordings" / split, per_class=per_class, seed=seed, seconds=(0.5, 2.0))
    load_audio_folder(folder / "recordings").save_to_disk(str(folder / "breath_vs_wheeze"))
    return folder / "breath_vs_wheeze"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--model", help="a converted encoder folder (default: a small random one)")
    parser.add_argument("--layers", default="last", choices=("last", "all"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    dataset = make_dataset(args.workdir)
    model = args.model or save_small_encoder(args.workdir / "encoder")
    return cli_main(
        [
            "benchmark",
            "--model",
            str(model),
            "--dataset",
            str(dataset),
            "--output",
            str(args.workdir / "results"),
            "--layers",
            args.layers,
            "--seeds",
            args.seeds,
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
