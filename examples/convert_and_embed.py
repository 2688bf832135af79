"""Convert an official M2D checkpoint and embed audio files with it.

python examples/convert_and_embed.py CHECKPOINT.pth OUTPUT_DIR audio1.wav audio2.wav ... [--save embeddings.npy]
"""

import argparse

import numpy as np
import torch
from transformers import AutoModel

from resp_hf import convert_m2d_checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output_dir")
    parser.add_argument("audio", nargs="+", help="audio files (any rate; stereo is averaged)")
    parser.add_argument("--save", help="write the embeddings to this .npy file")
    args = parser.parse_args()

    print(convert_m2d_checkpoint(args.checkpoint, args.output_dir))
    model = AutoModel.from_pretrained(args.output_dir, trust_remote_code=True).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    embeddings = model.embed(args.audio, downmix=True)
    for path, embedding in zip(args.audio, embeddings):
        print(f"{path}: {tuple(embedding.shape)} embedding, norm {embedding.norm():.3f}")
    if args.save:
        np.save(args.save, embeddings.numpy())


if __name__ == "__main__":
    main()
