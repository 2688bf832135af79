"""The `resp-hf` command line."""

import argparse
import logging
import sys


def add_convert_command(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="Convert an official M2D checkpoint into a Transformers folder.",
        description="Convert an official M2D .pth checkpoint into a folder that loads with AutoModel and "
        "AutoFeatureExtractor (trust_remote_code=True).",
    )
    parser.add_argument("checkpoint", help="the .pth file, e.g. m2d_vit_base-80x608p16x16-221006-mr7/checkpoint-300.pth")
    parser.add_argument("output_dir", help="folder to write")
    parser.add_argument(
        "--name",
        help="official-style name with input/patch size and rate, e.g. m2d_vit_base-80x608p16x16p16k "
        "(default: the checkpoint's folder name)",
    )
    parser.add_argument("--no-card", action="store_true", help="do not write README.md")
    parser.set_defaults(handler=run_convert)


def run_convert(args):
    from .convert import convert_m2d_checkpoint

    report = convert_m2d_checkpoint(args.checkpoint, args.output_dir, name=args.name, write_card=not args.no_card)
    print(report)


def build_parser():
    parser = argparse.ArgumentParser(prog="resp-hf", description="Respiratory audio foundation models for Transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_command(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"resp-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
