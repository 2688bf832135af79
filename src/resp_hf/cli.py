"""The `resp-hf` command line."""

import argparse
import importlib.util
import logging
import re
import sys
from pathlib import Path


def spelling_twins(option):
    """`--output_dir` and `--output-dir`: the underscored and the dashed form of a long option, canonical first."""
    if not option.startswith("--"):
        return [option]
    twins = [option, "--" + option[2:].replace("_", "-"), "--" + option[2:].replace("-", "_")]
    return list(dict.fromkeys(twins))


class CanonicalSpellingFormatter(argparse.HelpFormatter):
    """Help that names each option by its canonical (first) spelling, then its old ones without their twins."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        spellings = {}
        for option in action.option_strings:
            spellings.setdefault(option.replace("-", "_"), option)  # one of each dashed/underscored pair
        canonical, *old = spellings.values()
        if action.nargs != 0:
            canonical = f"{canonical} {self._format_args(action, self._get_default_metavar_for_optional(action))}"
        return ", ".join([canonical, *old])

    def _get_default_metavar_for_optional(self, action):
        return action.option_strings[0].lstrip("-").replace("-", "_").upper()


class RawDescriptionCanonicalSpellingFormatter(CanonicalSpellingFormatter, argparse.RawDescriptionHelpFormatter):
    """`CanonicalSpellingFormatter` that keeps the description's line breaks (a script's docstring)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """
    The parser of every `resp-hf` command. Usage mistakes come in one line (the usage of `resp-hf finetune` alone runs
    to dozens of lines), exit 2. The first spelling given to `add_argument` is the canonical one; every long option
    also answers to its dashed or underscored twin, as with `HfArgumentParser`.
    """

    def __init__(self, *args, formatter_class=CanonicalSpellingFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def add_argument(self, *names, **kwargs):
        return super().add_argument(*dict.fromkeys(twin for name in names for twin in spelling_twins(name)), **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self.arguments_given = list(sys.argv[1:] if args is None else args)  # for `error` to name the spelling used
        namespace, rest = super().parse_known_args(args, namespace)
        missing = [
            f"{action.dest} (or {action.option_strings[0]})"
            for action in self._actions
            if isinstance(action, PositionalOrOption)
            and action.option_strings
            and getattr(namespace, action.dest) is None
        ]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return namespace, rest

    def _get_option_tuples(self, option_string):
        # An abbreviation (--out) that matches several spellings of one option is no ambiguity: one match per option.
        matches = {}
        for match in super()._get_option_tuples(option_string):
            matches.setdefault(match[0], match)  # match[0] is the action
        return list(matches.values())

    def error(self, message):
        message = re.sub(r"--[\w-]+(?:/--[\w-]+)+", self.spelling_given, message)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def spelling_given(self, match):
        """Of the spellings `--a/--b/--c` argparse names an option by: the one on the command line, else the first."""
        spellings = match[0].split("/")
        given = getattr(self, "arguments_given", [])
        used = [spelling for spelling in spellings if any(arg.split("=")[0] == spelling for arg in given)]
        return (used or spellings)[0]


class PositionalOrOption(argparse.Action):
    """Stores a value given either as a positional or as an option, refusing it twice (`add_positional_or_option`)."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:  # the optional positional, not given
            return
        given = getattr(namespace, self.dest)
        if given is not None:
            parser.error(f"{self.dest} given twice: {given} and {value}")
        setattr(namespace, self.dest, value)


def add_positional_or_option(parser, option, help):
    """
    A required value that earlier versions took as the last positional (`resp-hf convert CHECKPOINT OUTPUT_DIR`) and
    that the canonical spelling names as an option (`--output_dir OUTPUT_DIR`): either form works, once.
    """
    dest = option.lstrip("-")
    parser.add_argument(dest, nargs="?", action=PositionalOrOption, help=f"{help} (or {option})")
    parser.add_argument(option, dest=dest, action=PositionalOrOption, help=f"{help} (or as the last positional)")


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
    add_positional_or_option(parser, "--output_dir", "folder to write")
    parser.add_argument(
        "--name",
        help="official-style name with input/patch size and rate, e.g. m2d_vit_base-80x608p16x16p16k "
        "(default: the checkpoint's folder name)",
    )
    parser.add_argument("--no_card", action="store_true", help="do not write README.md")
    parser.add_argument(
        "--overwrite_output_dir", "--overwrite", action="store_true", help="replace a non-empty output folder"
    )
    parser.set_defaults(handler=run_convert)


def run_convert(args):
    from .convert import convert_m2d_checkpoint

    report = convert_m2d_checkpoint(
        args.checkpoint,
        args.output_dir,
        name=args.name,
        write_card=not args.no_card,
        overwrite=args.overwrite_output_dir,
    )
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
    parser.add_argument("--commit_message", "--message", default="Upload resp_hf model", help="commit message")
    parser.set_defaults(handler=run_push)


def run_push(args):
    from .hub import push_folder

    commit = push_folder(
        args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message
    )
    print(f"Pushed {args.folder} to {args.repo_id}: {getattr(commit, 'commit_url', commit)}")


def saved_dataset_options():
    """`--output_dir` and `--overwrite_output_dir` of the commands that build a dataset and save it to disk."""
    options = OneLineErrorParser(add_help=False)
    options.add_argument("--output_dir", "--output", required=True, help="folder to save the DatasetDict in")
    options.add_argument(
        "--overwrite_output_dir", "--overwrite", action="store_true", help="replace a non-empty output folder"
    )
    return options


def add_opera_commands(subparsers):
    opera = subparsers.add_parser("opera", help="The OPERA benchmark tasks as Hugging Face datasets.")
    commands = opera.add_subparsers(dest="opera_command", required=True)
    listing = commands.add_parser("list", help="List the 19 OPERA tasks (and which an OPERA checkout can build).")
    listing.add_argument("--opera_root", help="an OPERA checkout: show which tasks its data can build")
    listing.set_defaults(handler=run_opera_list)
    build = commands.add_parser(
        "build",
        parents=[saved_dataset_options()],
        help="Build one task from an OPERA checkout and save it with save_to_disk.",
    )
    build.add_argument("task", help="task id (T1-T19) or name, e.g. T7 or icbhi_copd")
    build.add_argument("--opera_root", required=True, help="the OPERA checkout with the datasets downloaded")
    build.add_argument("--allow_missing", action="store_true", help="leave out missing or unreadable audio files")
    build.set_defaults(handler=run_opera_build)
    protocol = commands.add_parser(
        "protocol",
        help="Print the linear-probe protocol the benchmark runs for a task, with OPERA's source of each value.",
    )
    protocol.add_argument("task", help="task id (T1-T19) or name, e.g. T10 or kauh_obstructive")
    protocol.add_argument("--json", action="store_true", help="print it as JSON")
    protocol.set_defaults(handler=run_opera_protocol)
    push = commands.add_parser("push", help="Push a built task to the Hub (checks its license first).")
    push.add_argument("folder", help="a folder written by `resp-hf opera build`")
    push.add_argument("repo_id", help="dataset repository, e.g. my-org/opera-t7")
    push.add_argument("--private", action="store_true", help="create a private repository")
    push.add_argument(
        "--confirm_license", action="store_true", help="push a dataset whose license restricts redistribution"
    )
    push.set_defaults(handler=run_opera_push)


def run_opera_list(args):
    from .opera.commands import list_tasks

    print(list_tasks(args.opera_root))


def run_opera_build(args):
    from .opera.commands import build_and_save

    summary = build_and_save(
        args.task,
        args.opera_root,
        args.output_dir,
        allow_missing=args.allow_missing,
        overwrite=args.overwrite_output_dir,
    )
    print(summary)


def run_opera_protocol(args):
    import json

    from .opera.protocol import get_protocol

    protocol = get_protocol(args.task)
    print(json.dumps(protocol.to_dict(), indent=2) if args.json else protocol.describe())


def run_opera_push(args):
    from .opera.commands import push_built_task

    print(push_built_task(args.folder, args.repo_id, confirm_license=args.confirm_license, private=args.private))


def positive_int(text):
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text):
    """An argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def number_argument(description, accepts):
    """An argparse type: a number for which `accepts` holds (NaN never does), else an error saying it must be one."""

    def number(text):
        value = float(text)
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value

    return number


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
    parser.add_argument("--model_name_or_path", "--model", required=True, help="converted folder or Hub repo id")
    parser.add_argument("--tasks", default="", help="comma-separated OPERA task ids, e.g. T5,T6,T7")
    parser.add_argument("--opera_root", help="OPERA checkout with the datasets (for --tasks)")
    parser.add_argument("--dataset", action="append", default=[], help="a DatasetDict saved on disk (repeatable)")
    parser.add_argument(
        "--output_dir", "--output", required=True, help="folder for results, plots, predictions and the cache"
    )
    parser.add_argument(
        "--crop",
        choices=("random", "center", "none"),
        help="fit clips longer than --seconds (default: the protocol's random start, seeded per recording)",
    )
    parser.add_argument("--seconds", type=float, help="window length (default: the protocol's 10 s)")
    parser.add_argument(
        "--layers",
        default="last",
        help="original M2D layer numbers 0..L-1 (-1 = last, after the final LayerNorm), comma-separated, or 'all' "
        "(default: last)",
    )
    parser.add_argument(
        "--seeds", type=distinct_seeds, help="comma-separated distinct head seeds (default: the protocol's)"
    )
    parser.add_argument(
        "--num_train_epochs",
        "--epochs",
        type=positive_int,
        help="override the protocol's epochs of the linear heads (`resp-hf opera protocol`)",
    )
    parser.add_argument("--batch_size", "--batch-size", type=positive_int, default=16, help="clips per encoder batch")
    parser.add_argument("--allow_missing", action="store_true", help="leave out missing or unreadable OPERA audio")
    parser.add_argument("--cache_dir", help="embedding cache (default OUTPUT_DIR/embedding_cache)")
    parser.add_argument(
        "--overwrite_output_dir",
        "--overwrite",
        action="store_true",
        help="replace an earlier run's results in the output folder (its cache is reused)",
    )
    parser.add_argument(
        "--quantize",
        metavar="METHOD",
        help="embed with resp_hf.quantize(model, METHOD): int8 (CPU), bf16 or fp32 (CPU; see BenchmarkSettings)",
    )
    parser.set_defaults(handler=run_benchmark_command)


def run_benchmark_command(args):
    from .linear_probe import BenchmarkSettings, run_benchmark

    settings = BenchmarkSettings(
        crop=args.crop,
        seconds=args.seconds,
        layers=args.layers,
        seeds=tuple(int(seed) for seed in args.seeds.split(",")) if args.seeds else None,
        epochs=args.num_train_epochs,
        batch_size=args.batch_size,
        allow_missing=args.allow_missing,
        overwrite=args.overwrite_output_dir,
        quantize=args.quantize,
    )
    tasks = [task for task in args.tasks.split(",") if task]
    if not tasks and not args.dataset:
        raise ValueError("Nothing to evaluate: pass --tasks (with --opera_root) and/or --dataset.")
    run_benchmark(
        args.model_name_or_path,
        args.output_dir,
        tasks=tasks,
        opera_root=args.opera_root,
        datasets=args.dataset,
        settings=settings,
        cache_dir=args.cache_dir,
    )
    print((Path(args.output_dir) / "results.md").read_text())


def add_tasks_commands(subparsers):
    tasks = subparsers.add_parser(
        "tasks", help="Every task as a Hugging Face dataset: OPERA's and the ICBHI-cycle and SPRSound tasks."
    )
    commands = tasks.add_subparsers(dest="tasks_command", required=True)
    data = OneLineErrorParser(add_help=False)
    data.add_argument("--icbhi_root", help="ICBHI 2017 folder (ICBHI_final_database/, ICBHI_challenge_train_test.txt)")
    data.add_argument("--sprsound_root", help="SPRSound release folder (train2022_json, test2022_json, ... and *_wav)")
    opera = OneLineErrorParser(add_help=False)
    opera.add_argument("--opera_root", help="an OPERA checkout (OPERA tasks T1-T19)")
    listing = commands.add_parser(
        "list", parents=[opera, data], help="List every task, its license and what data builds."
    )
    listing.set_defaults(handler=run_tasks_list)
    split = OneLineErrorParser(add_help=False)
    split.add_argument("--validation_fraction", type=float, help="patients moved from train (0: none; default 0.2)")
    split.add_argument("--validation_seed", type=int, help="seed of the validation patients (default 1337)")
    split.add_argument("--split_file", help="an ICBHI split file other than the official one")
    parents = [opera, data, split, saved_dataset_options()]
    build = commands.add_parser("build", parents=parents, help="Build one task; save it to disk.")
    build.add_argument("task", help="e.g. icbhi-4class, sprsound-1-2, or an OPERA id such as T7")
    build.add_argument("--skip_invalid_cycles", action="store_true", help="leave out (and list) unreadable cycles")
    build.set_defaults(handler=run_tasks_build)
    bench = commands.add_parser(
        "benchmark",
        parents=[data, split],
        help="Fine-tune and linear-probe an encoder on ICBHI-cycle / SPRSound tasks over seeds (Trainer).",
    )
    bench.add_argument("--model_name_or_path", "--model", required=True, help="converted folder or Hub repo id")
    bench.add_argument("--tasks", default="icbhi-4class", help="comma-separated, e.g. icbhi-4class,sprsound-1-1")
    bench.add_argument("--output_dir", "--output", required=True, help="folder for results, plots and predictions")
    bench.add_argument("--protocols", default="finetune,linear", help="finetune and/or linear")
    bench.add_argument("--seeds", type=distinct_seeds, default="0,1,2", help="comma-separated distinct seeds")
    bench.add_argument("--seconds", type=float, default=8.0, help="window length (recipe: 8 s)")
    bench.add_argument("--pad", choices=("repeat", "zero"), default="repeat", help="padding of short segments")
    bench.add_argument("--num_train_epochs", "--epochs", type=positive_int, help="override every recipe's epochs")
    bench.add_argument(
        "--per_device_train_batch_size", "--batch-size", type=positive_int, help="override every recipe's batch size"
    )
    bench.add_argument("--learning_rate", type=float, help="override every recipe's learning rate")
    bench.add_argument(
        "--select_epoch_on",
        default="validation",
        help="the split whose score picks each run's epoch: validation (default), or a test split such as test, as "
        "M2D's and Patch-Mix's scripts do (optimistic; the results say so)",
    )
    bench.add_argument(
        "--overwrite_output_dir", "--overwrite", action="store_true", help="replace an earlier run's results"
    )
    bench.set_defaults(handler=run_tasks_benchmark)


def run_tasks_list(args):
    from .tasks.commands import list_all_tasks

    print(list_all_tasks(args.opera_root, args.icbhi_root, args.sprsound_root))


def tasks_settings(args, **extra):
    from .tasks.finetune_benchmark import TaskBenchmarkSettings

    return TaskBenchmarkSettings(
        validation_fraction=args.validation_fraction,
        validation_seed=args.validation_seed,
        split_file=args.split_file,
        **extra,
    )


def run_tasks_build(args):
    from .tasks.commands import build_and_save_task

    settings = tasks_settings(args)
    roots = dict(opera_root=args.opera_root, icbhi_root=args.icbhi_root, sprsound_root=args.sprsound_root)
    skip_invalid = args.skip_invalid_cycles
    overwrite = args.overwrite_output_dir
    report = build_and_save_task(
        args.task, args.output_dir, **roots, settings=settings, skip_invalid=skip_invalid, overwrite=overwrite
    )
    print(report)


def run_tasks_benchmark(args):
    from .tasks.finetune_benchmark import run_task_benchmark
    from .tasks.segments import SegmentWindow

    settings = tasks_settings(
        args,
        protocols=tuple(protocol for protocol in args.protocols.split(",") if protocol),
        seeds=tuple(int(seed) for seed in args.seeds.split(",")),
        window=SegmentWindow(seconds=args.seconds, pad=args.pad),
        epochs=args.num_train_epochs,
        batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate,
        select_epoch_on=args.select_epoch_on,
    )
    roots = {"icbhi": args.icbhi_root, "sprsound": args.sprsound_root}
    tasks = args.tasks.split(",")
    overwrite = args.overwrite_output_dir
    paths = run_task_benchmark(args.model_name_or_path, args.output_dir, tasks, roots, settings, overwrite=overwrite)
    print(paths["markdown"].read_text())


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
    add_positional_or_option(logmel, "--output_dir", "folder for the .npy files and files.csv")
    logmel.add_argument(
        "--model_name_or_path",
        "--model",
        help="a resp_hf folder whose front end to use (default: the 16 kHz M2D one)",
    )
    logmel.add_argument(
        "--min_seconds",
        type=float,
        default=0.0,
        help="zero-pad shorter audio to this length first (M2D's wav_to_lms.py and the m2d-resp recipe: 6.1)",
    )
    logmel.add_argument(
        "--overwrite_output_dir", "--overwrite", action="store_true", help="replace a non-empty output folder"
    )
    logmel.set_defaults(handler=run_logmel)


def add_pretrain_data_command(subparsers):
    parser = subparsers.add_parser(
        "pretrain-data",
        help="Build the M2D+Resp paper's respiratory list and AudioSet mixture for `resp-hf pretrain`.",
        description="Writes respiratory.csv (ICBHI training recordings x6, HF_Lung, CoughVID with cough_detected > "
        "0.95) and, with --audioset, mixture.csv (AudioSet + the respiratory list x29), and prints the counts next "
        "to the paper's.",
    )
    parser.add_argument("--icbhi", required=True, help="ICBHI_final_database (the split file in it or its parent)")
    parser.add_argument("--hf_lung", required=True, help="folder of the HF_Lung_V2 recordings (the paper: 3,839)")
    parser.add_argument("--coughvid", required=True, help="CoughVID folder: metadata_compiled.csv and the audio")
    parser.add_argument("--audioset", help="AudioSet file list (.csv with a path column) or folder")
    parser.add_argument("--output_dir", "--output", required=True, help="folder for respiratory.csv and mixture.csv")
    parser.add_argument("--icbhi_repeat", type=positive_int, default=6, help="ICBHI repetitions (paper: 6)")
    parser.add_argument("--repeat", type=positive_int, default=29, help="respiratory list repetitions (paper: 29)")
    parser.add_argument("--cough_threshold", type=float, default=0.95, help="CoughVID cough_detected above this")
    parser.add_argument(
        "--overwrite_output_dir", "--overwrite", action="store_true", help="replace a non-empty output folder"
    )
    parser.set_defaults(handler=run_pretrain_data)


def run_pretrain_data(args):
    from .training.pretrain_data import build_pretraining_lists, pretraining_lists_report

    counts, notes = build_pretraining_lists(
        args.output_dir,
        args.icbhi,
        args.hf_lung,
        args.coughvid,
        audioset=args.audioset,
        icbhi_repeat=args.icbhi_repeat,
        respiratory_repeat=args.repeat,
        cough_threshold=args.cough_threshold,
        overwrite=args.overwrite_output_dir,
    )
    print(pretraining_lists_report(args.output_dir, counts, notes))


def run_pretrain(args):
    from .training.pretrain import main as pretrain_main

    return pretrain_main(args.rest)


def run_logmel(args):
    from .models.resp_m2d import RespM2DConfig
    from .training.pretrain_data import precompute_log_mels

    model = args.model_name_or_path
    config = RespM2DConfig.from_pretrained(model) if model else RespM2DConfig()
    files = precompute_log_mels(
        args.input_dir, args.output_dir, config, min_seconds=args.min_seconds, overwrite=args.overwrite_output_dir
    )
    print(f"Wrote {files}")


def add_demo_commands(subparsers):
    plot = subparsers.add_parser(
        "plot", help="Plot a recording's spectrogram with the model's per-step scores (or embeddings) under it."
    )
    plot.add_argument("model", help="a resp_hf folder or Hub repo id (classifier or encoder)")
    plot.add_argument("audio", help="an audio file (WAV, FLAC, OGG, MP3; any rate)")
    plot.add_argument("--output", required=True, help="image to write, e.g. figure.png (or .pdf, .svg)")
    plot.add_argument("--downmix", action="store_true", help="average the channels of multichannel audio")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing image at --output")
    plot.set_defaults(handler=run_plot)
    demo = subparsers.add_parser("demo", help="Start a local Gradio web demo of a model (needs resp-hf[demo]).")
    demo.add_argument("model", help="a resp_hf folder or Hub repo id")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    demo.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    demo.add_argument("--title", help="the page's title (default: the model's folder or repo name)")
    demo.set_defaults(handler=run_demo)
    space = subparsers.add_parser(
        "space", help="Write a Hugging Face Space folder (app.py, requirements.txt, README.md) that demos a model."
    )
    space.add_argument("model_id", help="the model's Hub repo id, e.g. my-org/resp-m2d-icbhi")
    add_positional_or_option(space, "--output_dir", "folder to write (must be empty or new)")
    space.add_argument("--title", help="the Space's title (default: from the model id)")
    space.set_defaults(handler=run_space)


def require_module(module):
    """Raises ModuleNotFoundError before any work when an optional module is missing (`main` names its extra)."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def run_plot(args):
    require_module("matplotlib")
    from .visualize import plot_file

    print(f"Wrote {plot_file(args.model, args.audio, args.output, downmix=args.downmix, overwrite=args.overwrite)}")


def run_demo(args):
    require_module("gradio")
    from .demo import launch_demo

    launch_demo(args.model, host=args.host, port=args.port, title=args.title)


def run_space(args):
    require_module("gradio")
    from .demo import write_space

    print(f"Wrote {write_space(args.model_id, args.output_dir, title=args.title)}")


# The optional modules each extra installs (pyproject.toml): a command that needs one names the extra to install.
EXTRA_OF_MODULE = {
    "accelerate": "train",
    "datasets": "train",
    "matplotlib": "demo",
    "openpyxl": "train",
    "sklearn": "train",
    "tensorboard": "train",
    "peft": "peft",
    "gradio": "demo",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
}


def add_export_command(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="Export a model folder to another runtime.",
        description="Export a resp_m2d folder (encoder or classifier) to ONNX with dynamic batch and length, "
        "checked in ONNX Runtime against PyTorch.",
    )
    formats = parser.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser("onnx", help="ONNX (needs the [export] extra: onnx, onnxruntime, onnxscript)")
    onnx.add_argument("model", help="converted or fine-tuned folder")
    add_positional_or_option(onnx, "--output_dir", "folder to write model.onnx (and the folder's configs) into")
    onnx.add_argument(
        "--overwrite_output_dir", "--overwrite", action="store_true", help="replace a non-empty output folder"
    )
    onnx.add_argument(
        "--int8", action="store_true", help="also write model_int8.onnx (dynamic int8 MatMul/Gemm, per channel)"
    )
    onnx.set_defaults(handler=run_export_onnx)


def run_export_onnx(args):
    from .export import INT8_ONNX_FILE, export_onnx

    report = export_onnx(args.model, args.output_dir, overwrite=args.overwrite_output_dir, int8=args.int8)
    print(report)
    if args.int8:
        path = report.path.parent / INT8_ONNX_FILE
        print(f"Wrote {path} (ONNX Runtime dynamic quantization: int8 MatMul/Gemm weights per channel).")


def build_parser():
    parser = OneLineErrorParser(
        prog="resp-hf",
        description="Respiratory audio foundation models for Transformers.",
        epilog="Options have one spelling per concept on every command, the Trainer's (--model_name_or_path, "
        "--output_dir, --num_train_epochs, ...); each also answers to its dashed twin (--output-dir), and the "
        "spellings of earlier versions (--model, --output, --epochs, ...) keep working.",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_command(subparsers)
    add_finetune_command(subparsers)
    add_push_command(subparsers)
    add_opera_commands(subparsers)
    add_benchmark_command(subparsers)
    add_tasks_commands(subparsers)
    add_card_command(subparsers)
    add_pretrain_commands(subparsers)
    add_pretrain_data_command(subparsers)
    add_export_command(subparsers)
    add_demo_commands(subparsers)
    return parser


def missing_extra(error):
    """The extra that installs the module a ModuleNotFoundError is about, or None when it is no optional module."""
    return EXTRA_OF_MODULE.get((error.name or "").split(".")[0])


def error_message(error):
    """One line for an expected error: what went wrong, and the extra to install for a missing optional module."""
    if isinstance(error, ModuleNotFoundError):
        extra = missing_extra(error)
        return f'this command needs the {extra!r} extra ({error}): pip install "resp-hf[{extra}]"'
    return in_cli_terms(" ".join(str(error).split())) or type(error).__name__


# Python argument spellings that library messages use alone, and the flags that set them on the command line.
CLI_SPELLINGS = {"downmix=True": "--downmix", "overwrite=True": "--overwrite"}


def in_cli_terms(message):
    """A library message in the command line's terms: "pass x=True (--x)" becomes "pass --x"."""
    message = re.sub(r"`?\b\w+=[^\s()`]+`? \((--[^)]+)\)", r"\1", message)
    for python_spelling, flag in CLI_SPELLINGS.items():
        message = message.replace(python_spelling, flag)
    return message


def is_expected(error):
    """
    Errors of use and data (bad arguments, files, folders, formats) and missing optional modules. Anything else
    (KeyError, TypeError, RuntimeError, ...) is a bug and keeps its traceback.
    """
    if isinstance(error, ModuleNotFoundError):
        return missing_extra(error) is not None
    return isinstance(error, (ValueError, OSError))


def main(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("finetune", "pretrain"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = args.handler(args)  # None, or an exit code (an interrupted pre-training run: 128 + signal)
    except Exception as error:
        if args.traceback or not is_expected(error):
            raise
        print(f"resp-hf {args.command}: error: {error_message(error)}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
