"""The `resp-hf` command line."""

import argparse
import logging
import sys
from pathlib import Path


def add_convert_command(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="Convert an official M2D checkpoint into a Transformers folder.",
        description="Convert an official M2D .pth checkpoint into a folder that loads with AutoModel and "
        "AutoFeatureExtractor (trust_remote_code=True).",
    )
    parser.add_argument(
        "checkpoint", help="the .pth file, e.g. m2d_vit_base-80x608p16x16-221006-mr7/checkpoint-300.pth"
    )
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


def add_finetune_command(subparsers):
    parser = subparsers.add_parser(
        "finetune",
        help="Fine-tune an encoder on a labelled audio dataset with Trainer.",
        description="Fine-tune with Trainer; all further arguments go to the fine-tuning script "
        "(run `resp-hf finetune --help` for them).",
        add_help=False,
    )
    parser.set_defaults(handler=run_finetune)


def run_finetune(args):
    from .training.finetune import main as finetune_main

    finetune_main(args.rest)


def add_push_command(subparsers):
    parser = subparsers.add_parser(
        "push",
        help="Upload a converted or fine-tuned folder (model, feature extractor, remote code, card) to the Hub.",
    )
    parser.add_argument("folder", help="a folder written by `resp-hf convert` or `resp-hf finetune`")
    parser.add_argument("repo_id", help="e.g. my-org/resp-m2d")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--message", default="Upload resp_hf model", help="commit message")
    parser.set_defaults(handler=run_push)


def run_push(args):
    from .hub import push_folder

    commit = push_folder(args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.message)
    print(f"Pushed {args.folder} to {args.repo_id}: {getattr(commit, 'commit_url', commit)}")


def add_opera_commands(subparsers):
    opera = subparsers.add_parser("opera", help="The OPERA benchmark tasks as Hugging Face datasets.")
    commands = opera.add_subparsers(dest="opera_command", required=True)
    listing = commands.add_parser("list", help="List the 19 OPERA tasks (and which an OPERA checkout can build).")
    listing.add_argument("--opera-root", help="an OPERA checkout: show which tasks its data can build")
    listing.set_defaults(handler=run_opera_list)
    build = commands.add_parser("build", help="Build one task from an OPERA checkout and save it with save_to_disk.")
    build.add_argument("task", help="task id (T1-T19) or name, e.g. T7 or icbhi_copd")
    build.add_argument("--opera-root", required=True, help="the OPERA checkout with the datasets downloaded")
    build.add_argument("--output", required=True, help="folder to save the DatasetDict in")
    build.add_argument("--allow-missing", action="store_true", help="leave out missing or unreadable audio files")
    build.set_defaults(handler=run_opera_build)
    push = commands.add_parser("push", help="Push a built task to the Hub (checks its license first).")
    push.add_argument("folder", help="a folder written by `resp-hf opera build`")
    push.add_argument("repo_id", help="dataset repository, e.g. my-org/opera-t7")
    push.add_argument("--private", action="store_true", help="create a private repository")
    push.add_argument(
        "--confirm-license", action="store_true", help="push a dataset whose license restricts redistribution"
    )
    push.set_defaults(handler=run_opera_push)


def run_opera_list(args):
    from .opera.commands import list_tasks

    print(list_tasks(args.opera_root))


def run_opera_build(args):
    from .opera.commands import build_and_save

    print(build_and_save(args.task, args.opera_root, args.output, allow_missing=args.allow_missing))


def run_opera_push(args):
    from .opera.commands import push_built_task

    print(push_built_task(args.folder, args.repo_id, confirm_license=args.confirm_license, private=args.private))


def positive_int(text):
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def distinct_seeds(text):
    """An argparse type: comma-separated distinct integers (returned as the text given)."""
    seeds = [int(seed) for seed in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"the seeds must be distinct, got {text}")
    return text


def add_benchmark_command(subparsers):
    parser = subparsers.add_parser(
        "benchmark",
        help="OPERA linear-probe evaluation of an encoder (frozen embeddings, linear heads over seeds).",
        description="Embed each task once (cached), train OPERA's linear head over seeds with Trainer, and write "
        "results.csv, results.md, results.json and per-task plots with the published OPERA baselines.",
    )
    parser.add_argument("--model", required=True, help="converted folder or Hub repo id")
    parser.add_argument("--tasks", default="", help="comma-separated OPERA task ids, e.g. T5,T6,T7")
    parser.add_argument("--opera-root", help="OPERA checkout with the datasets (for --tasks)")
    parser.add_argument("--dataset", action="append", default=[], help="a DatasetDict saved on disk (repeatable)")
    parser.add_argument("--output", required=True, help="folder for results, plots, predictions and the cache")
    parser.add_argument("--crop", choices=("center", "random", "none"), default="center", help="fit clips to --seconds")
    parser.add_argument("--seconds", type=float, default=10.0, help="window length (default 10 s)")
    parser.add_argument("--layers", choices=("last", "all"), default="last", help="evaluate every layer with 'all'")
    parser.add_argument(
        "--seeds", type=distinct_seeds, default="0,1,2,3,4", help="comma-separated distinct seeds of the linear heads"
    )
    parser.add_argument("--epochs", type=positive_int, help="override the task's epochs (64; KAUH 50, SSBPR 32)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="clips per encoder batch")
    parser.add_argument("--allow-missing", action="store_true", help="leave out missing or unreadable OPERA audio")
    parser.add_argument("--cache-dir", help="embedding cache (default OUTPUT/embedding_cache)")
    parser.add_argument("--quantize", choices=("int8",), help="embed with the encoder quantized to int8 (CPU)")
    parser.set_defaults(handler=run_benchmark_command)


def run_benchmark_command(args):
    from .benchmark import BenchmarkSettings, run_benchmark

    settings = BenchmarkSettings(
        crop=args.crop,
        seconds=args.seconds,
        layers=args.layers,
        seeds=tuple(int(seed) for seed in args.seeds.split(",")),
        epochs=args.epochs,
        batch_size=args.batch_size,
        allow_missing=args.allow_missing,
        quantize=args.quantize,
    )
    tasks = [task for task in args.tasks.split(",") if task]
    if not tasks and not args.dataset:
        raise ValueError("Nothing to evaluate: pass --tasks (with --opera-root) and/or --dataset.")
    run_benchmark(args.model, args.output, tasks, args.opera_root, args.dataset, settings, cache_dir=args.cache_dir)
    print((Path(args.output) / "results.md").read_text())


def add_card_command(subparsers):
    parser = subparsers.add_parser("card", help="Write benchmark results (model-index and table) into a model card.")
    parser.add_argument("folder", help="a converted or fine-tuned model folder")
    parser.add_argument("--results", required=True, help="results.json written by `resp-hf benchmark`")
    parser.set_defaults(handler=run_card_command)


def run_card_command(args):
    from .cards import add_benchmark_results

    print(f"Updated {add_benchmark_results(args.folder, args.results)}")


def add_pretrain_commands(subparsers):
    pretrain = subparsers.add_parser(
        "pretrain",
        help="Further pre-training with the M2D objective (Accelerate).",
        description="All further arguments go to the pre-training script (run `resp-hf pretrain --help`).",
        add_help=False,
    )
    pretrain.set_defaults(handler=run_pretrain)
    logmel = subparsers.add_parser("logmel", help="Precompute raw log-mel .npy files (and files.csv) for pre-training.")
    logmel.add_argument("input_dir", help="folder of audio files (searched recursively)")
    logmel.add_argument("output_dir", help="folder for the .npy files and files.csv")
    logmel.add_argument("--model", help="a resp_hf folder whose front end to use (default: the 16 kHz M2D one)")
    logmel.set_defaults(handler=run_logmel)


def run_pretrain(args):
    from .training.pretrain import main as pretrain_main

    return pretrain_main(args.rest)


def run_logmel(args):
    from .models.resp_m2d import RespM2DConfig
    from .training.pretrain_data import precompute_log_mels

    config = RespM2DConfig.from_pretrained(args.model) if args.model else RespM2DConfig()
    print(f"Wrote {precompute_log_mels(args.input_dir, args.output_dir, config)}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="resp-hf", description="Respiratory audio foundation models for Transformers."
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_command(subparsers)
    add_finetune_command(subparsers)
    add_push_command(subparsers)
    add_opera_commands(subparsers)
    add_benchmark_command(subparsers)
    add_card_command(subparsers)
    add_pretrain_commands(subparsers)
    return parser


def main(argv=None):
    args, rest = build_parser().parse_known_args(argv)
    if rest and args.command not in ("finetune", "pretrain"):
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = args.handler(args)  # None, or an exit code (an interrupted pre-training run: 128 + signal)
    except (ValueError, OSError, KeyError) as error:
        if args.traceback:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"resp-hf {args.command}: error: {message}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
