"""A CPU smoke run of M2D further pre-training on recordings this script makes itself.

    python examples/pretrain_smoke.py WORKDIR [--steps 20]

It writes synthetic breath-like and wheeze-like recordings, precomputes their log-mel with `resp-hf logmel`, trains a
small encoder from scratch with `resp-hf pretrain` (add `accelerate launch` for several processes), and embeds a clip
with the exported encoder loaded through `AutoModel`.
"""

import argparse
import json
from pathlib import Path

from transformers import AutoModel

from resp_hf.cli import main as cli_main
from resp_hf.synthetic import write_two_class_recordings

SMALL_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "input_size": [80, 96],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    audio = write_two_class_recordings(args.workdir / "audio", per_class=16, seed=0, seconds=(1.5, 4.0))
    cli_main(["logmel", str(audio), str(args.workdir / "logmel")])
    code = cli_main(
        [
            "pretrain",
            "--init",
            "scratch",
            "--encoder-config",
            json.dumps(SMALL_ENCODER),
            "--data",
            str(args.workdir / "logmel" / "files.csv"),
            "--output-dir",
            str(args.workdir / "run"),
            "--max-steps",
            str(args.steps),
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--base-lr",
            "1e-2",
            "--warmup-epochs",
            "0.5",
            "--log-every",
            "5",
            "--predictor-width",
            "32",
            "--predictor-depth",
            "2",
            "--predictor-heads",
            "4",
        ]
    )
    if code:
        return code
    encoder = AutoModel.from_pretrained(args.workdir / "run" / "encoder", trust_remote_code=True).eval()
    embedding = encoder.embed(str(next(audio.rglob("*.wav"))))
    print(
        f"Exported encoder embeds a clip as {tuple(embedding.shape)}; loss curve: {args.workdir / 'run' / 'loss.png'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
