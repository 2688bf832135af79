"""Linear-probe AUROC of an int8 encoder against the same encoder in fp32, on a synthetic task that does not saturate.

    python benchmarks/int8_accuracy.py --output benchmarks/results                 # the golden checkpoint
    python benchmarks/int8_accuracy.py --model ./resp-m2d --output out             # a converted checkpoint

Each clip is breath-like low-band noise plus a faint wheeze-like tone; the two classes differ only in the tone's
level, and the level ranges overlap, so a linear probe scores well below 1.0 and a loss of accuracy would show. The
benchmark (`resp-hf benchmark`, ten head seeds) runs once with the fp32 encoder and once with `--quantize int8`;
the change is taken seed by seed (the same head seed sees the same training order in both), so the head's own
seed-to-seed spread cancels. Writes `int8_accuracy.json` and `int8_accuracy.md`.
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from resp_hf.synthetic import high_band_tone, low_band_noise

RATE = 16000
GOLDEN_CHECKPOINT = Path(__file__).resolve().parents[1].parent / "shared/golden/m2d_vit_base-80x608p16x16p16k-golden"
CLIPS_PER_CLASS = {"train": 100, "validation": 30, "test": 200}
TONE_LEVELS = {"quiet": (0.00, 0.12), "louder": (0.06, 0.18)}  # overlapping on purpose


def write_split(folder, clips_per_class, rng, seconds=2.0):
    """`folder/<class>/*.wav`: low-band noise plus a tone whose level range depends on the class."""
    for name, (low, high) in TONE_LEVELS.items():
        (folder / name).mkdir(parents=True)
        for index in range(clips_per_class):
            noise = low_band_noise(rng, seconds, RATE)
            tone = high_band_tone(rng, seconds, RATE)
            audio = noise / np.abs(noise).max() + rng.uniform(low, high) * tone
            audio = rng.uniform(0.1, 0.5) * audio / np.abs(audio).max()
            soundfile.write(folder / name / f"{index:03d}.wav", audio.astype(np.float32), RATE)


def build_dataset(root, seed):
    """A saved `DatasetDict` with train/validation/test splits of the task."""
    from resp_hf.data import load_audio_folder

    rng = np.random.default_rng(seed)
    for split, count in CLIPS_PER_CLASS.items():
        write_split(root / "recordings" / split, count, rng)
    load_audio_folder(root / "recordings").save_to_disk(str(root / "dataset"))
    return root / "dataset"


def resp_hf(*arguments):
    subprocess.run([sys.executable, "-m", "resp_hf.cli", *map(str, arguments)], check=True)


def test_auroc_per_seed(results_csv):
    """Layer -> {seed: test AUROC} from a `resp-hf benchmark` results.csv (its per-seed rows)."""
    scores = {}
    with open(results_csv, newline="") as file:
        for row in csv.DictReader(file):
            if row["seed"].isdigit():
                scores.setdefault(row["layer"], {})[int(row["seed"])] = float(row["value"])
    return scores


def compare(fp32, int8):
    """Per layer: mean AUROC of both and the mean and std of the seed-by-seed change."""
    rows = []
    for layer, by_seed in fp32.items():
        seeds = sorted(by_seed)
        changes = np.array([int8[layer][seed] - by_seed[seed] for seed in seeds])
        rows.append(
            {
                "layer": layer,
                "fp32": float(np.mean([by_seed[seed] for seed in seeds])),
                "int8": float(np.mean([int8[layer][seed] for seed in seeds])),
                "change_mean": float(changes.mean()),
                "change_std": float(changes.std()),
                "largest_change": float(changes[np.abs(changes).argmax()]),
            }
        )
    return rows


def markdown(rows, model, seeds):
    lines = [
        f"Linear-probe test AUROC, synthetic quiet-vs-louder tone task, {model}, seeds {seeds}:",
        "",
        "| layer | fp32 | int8 | int8 - fp32, per seed: mean ± std | largest |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['layer']} | {row['fp32']:.4f} | {row['int8']:.4f} | {row['change_mean']:+.4f} ± "
            f"{row['change_std']:.4f} | {row['largest_change']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a converted resp_hf folder (default: the golden checkpoint, converted)")
    parser.add_argument("--output", required=True, help="folder for int8_accuracy.json and int8_accuracy.md")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--layers", default="all", help="as `resp-hf benchmark --layers`")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        model = args.model
        if model is None:
            model = work / "golden"
            resp_hf("convert", next(GOLDEN_CHECKPOINT.glob("checkpoint-*.pth")), model)
        dataset = build_dataset(work, seed=0)
        scores = {}
        for label, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
            output = work / label
            resp_hf(
                "benchmark",
                "--model",
                model,
                "--dataset",
                dataset,
                "--output",
                output,
                "--seeds",
                args.seeds,
                "--layers",
                args.layers,
                *extra,
            )
            scores[label] = test_auroc_per_seed(output / "results.csv")
    rows = compare(scores["fp32"], scores["int8"])
    name = Path(args.model).name if args.model else "golden checkpoint (2 blocks, random weights)"
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "int8_accuracy.json").write_text(json.dumps({"model": name, "seeds": args.seeds, "rows": rows}, indent=1))
    (output / "int8_accuracy.md").write_text(markdown(rows, name, args.seeds))
    print(markdown(rows, name, args.seeds))


if __name__ == "__main__":
    main()
