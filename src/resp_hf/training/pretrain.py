"""Further pre-training of an M2D encoder with the M2D objective, on one CPU or many GPUs through Accelerate.

    accelerate launch -m resp_hf.training.pretrain --recipe m2d-resp \\
        --init m2d_vit_base-80x608p16x16-221006-mr7/checkpoint-300.pth \\
        --data audioset.csv --data respiratory.csv:29 --output-dir ./m2d-resp --batch-size 64

`--recipe m2d-resp` sets the M2D+Resp paper's values (`recipes.py` names the source of each); `resp-hf pretrain-data`
writes the paper's respiratory list and mixture.

Several CPU processes (gloo): `accelerate launch --multi_gpu --num_processes 2 -m resp_hf.training.pretrain --cpu ...`
(accelerate's own `--cpu` launch option starts a single process unless MPI is configured).

`--data` takes CSV file lists (a `path` column of audio or precomputed log-mel `.npy` files), folders, and Hugging Face
datasets (a `save_to_disk` folder or `hf:<Hub id>`, with `@SPLIT`, default `train`), each with an optional `:N`
repetition count. `--init` takes a `resp_hf` folder, an official M2D checkpoint (full training
checkpoints also restore the target encoder and predictor), or `scratch`.
"""

import argparse
import contextlib
import csv
import json
import logging
import math
import pickle
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .. import cards
from ..cli import (
    OneLineErrorParser,
    RawDescriptionCanonicalSpellingFormatter,
    non_negative_int,
    number_argument,
    positive_int,
)
from ..convert import architecture_of, check_checkpoint_fits, file_sha256, load_checkpoint, read_m2d_checkpoint
from ..models.resp_m2d import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel
from ..output_folders import (
    atomic_file,
    atomic_folder,
    check_holds_no_current_folder,
    check_output_folder,
    is_within,
    remove_outputs,
    write_text_atomically,
)
from ..quantize import cpu_has_bf16_kernels
from .pretrain_data import LogMelUnits, min_seconds_argument, norm_stats_from_crops, parse_source, read_source
from .pretraining_model import M2DPretrainingModel, predictor_config, predictor_config_from_weights, visible_patches
from .recipes import RECIPES

logger = logging.getLogger(__name__)

BF16_EMULATED = (
    "bf16 is emulated on this CPU (no AVX-512 BF16 or AMX instructions): training runs about 3x (AVX-512) to 100x "
    "(AVX2) slower than with --mixed_precision no."
)

STATE_FILE = "m2d_pretraining.safetensors"
PARTIAL = ".partial"  # suffix of a checkpoint folder still being written
# The project's own resumable state, in formats that cannot run code when read: counters, schedule and EMA progress
# (JSON), each process's random generators (safetensors), and a manifest of sizes and checksums written last.
TRAIN_STATE_FILE = "train_state.json"
RNG_STATE_FILE = "rng_state_{}.safetensors"
MANIFEST_FILE = "checkpoint.json"
LOG_FILE = "training_log.csv"  # one row per logged step
ENCODER_FOLDER = "encoder"  # the trained encoder
LOG_FIELDS = ("step", "epoch", "loss", "lr", "ema_decay", "samples_per_second")
# What a run writes in --output-dir (`pretrain` is the TensorBoard run folder); --overwrite removes these only.
RUN_OUTPUTS = ("checkpoints", ENCODER_FOLDER, LOG_FILE, "loss.png", "pretrain")
PREDICTOR_OPTIONS_IGNORED = "the predictor keeps its saved size (--predictor-* options do not apply)"
# What decides a run's losses step by step, recorded in each checkpoint and compared when it is resumed: the encoder
# config fields that shape pre-training (front end, sizes, activation, dropout, normalization), these options, and
# the predictor's size, the number of clips, processes and accumulation steps (see `run_settings`).
ENCODER_SETTINGS = (
    "sampling_rate",
    "n_fft",
    "win_length",
    "hop_length",
    "f_min",
    "f_max",
    "window",
    "input_size",
    "patch_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "norm_mean",
    "norm_std",
)
OPTION_SETTINGS = (
    "batch_size",
    "base_lr",
    "warmup_epochs",
    "clip_grad",
    "weight_decay",
    "mask_ratio",
    "ema_start",
    "ema_end",
    "mixed_precision",
    "seed",
    "min_seconds",
)


def model_from_official(
    path: str | Path, name: str | None = None, predictor: RespM2DConfig | None = None
) -> tuple[M2DPretrainingModel, list[str]]:
    """An M2D pre-training model from an official checkpoint; its target encoder and predictor are reused if present."""
    checkpoint = read_m2d_checkpoint(path, name)
    return pretraining_model_with(
        checkpoint.config, checkpoint.encoder_weights, checkpoint.pretraining_weights, checkpoint.path, predictor
    )


def pretraining_model_with(
    config: RespM2DConfig,
    encoder: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    source: Path,
    predictor: RespM2DConfig | None,
) -> tuple[M2DPretrainingModel, list[str]]:
    """
    `(model, parts reused)`: a pre-training model with the online `encoder` weights and the target-encoder and
    predictor `weights` of `source` (the predictor sized by its weights when they have one), checked against a model
    on the meta device first, so that sizes they do not fit are never allocated. A target encoder the weights lack
    starts as a copy of the online encoder.
    """
    if "predictor.embed.weight" in weights:
        predictor = predictor_config_from_weights(weights, source)
    predictor = predictor or predictor_config()
    architecture = (
        f"the pre-training model (encoder: {architecture_of(config)}; predictor: {predictor.num_hidden_layers} layers, "
        f"width {predictor.hidden_size})"
    )
    with torch.device("meta"):  # shapes only: sizes the weights do not have are never allocated
        model = M2DPretrainingModel(config, predictor)
        check_checkpoint_fits(model, weights, source, architecture, optional=("online.", "target_", "predictor."))
    model = M2DPretrainingModel(config, predictor)
    model.online.load_state_dict(encoder)
    model.load_state_dict(weights, strict=False)
    reused = [
        part
        for prefix, part in (("target_", "target encoder"), ("predictor.", "predictor"))
        if any(key.startswith(prefix) for key in weights)
    ]
    if "target encoder" not in reused:
        model.update_target(0.0)
    return model, reused


def build_model(
    init: str, encoder_config: dict | None = None, name: str | None = None, predictor: RespM2DConfig | None = None
) -> tuple[M2DPretrainingModel, list[str]]:
    """`(model, notes)` from `scratch`, a resp_hf folder (with its saved target/predictor) or an official file."""
    if init == "scratch":
        model = M2DPretrainingModel(RespM2DConfig(**(encoder_config or {})), predictor)
        model.update_target(0.0)
        return model, ["initialized from scratch"]
    path = Path(init)
    if path.is_dir():
        online = RespM2DModel.from_pretrained(path)
        state_path = path / STATE_FILE
        saved = load_checkpoint(state_path) if state_path.is_file() else {}
        model, reused = pretraining_model_with(online.config, online.state_dict(), saved, state_path, predictor)
    else:
        model, reused = model_from_official(path, name, predictor)
    notes = [f"encoder from {path}" + (f"; reused its {' and '.join(reused)}" if reused else "")]
    return model, notes + ([PREDICTOR_OPTIONS_IGNORED] if "predictor" in reused else [])


class TrainState:
    """Optimizer steps, epochs and batches consumed in the current epoch (saved as JSON in each checkpoint)."""

    def __init__(self):
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batches_in_epoch = (int(state[k]) for k in ("step", "epoch", "batches_in_epoch"))

    def next_epoch(self) -> None:
        self.epoch, self.batches_in_epoch = self.epoch + 1, 0


def ema_decay(step, total_steps, start, end):
    """EMA decay rising linearly from `start` at step 0 to `end` at the last step (M2D's `ema_decay_sched`)."""
    return start + (end - start) * min(1.0, step / max(1, total_steps - 1))


def parameter_groups(model, weight_decay):
    """AdamW groups: no weight decay for biases, norms, the CLS/mask tokens and positional tables."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        skip = parameter.ndim == 1 or name.endswith(("cls_token", "mask_token", "position_embeddings"))
        (no_decay if skip else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def export_encoder(model, output_dir, args, steps):
    """
    The online encoder as a resp_hf folder (AutoModel / AutoFeatureExtractor) with a model card, plus the target and
    predictor.
    """
    output_dir = Path(output_dir)
    with atomic_folder(output_dir) as folder:
        write_encoder_folder(model, folder, args, steps, name=output_dir.name)
    return output_dir


def write_encoder_folder(model, folder, args, steps, name):
    model.online.save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(model.config).save_pretrained(folder)
    rest = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("online.")}
    save_file(rest, folder / STATE_FILE)
    sources = ", ".join(f"`{spec}`" for spec in args.data)
    training_data = (
        f"Further pre-trained with `resp-hf pretrain` (the M2D objective) from `{args.init}` for {steps} optimizer "
        f"steps on {sources}."
    )
    card = cards.encoder_card(model.config, args.init, "n/a", name=name, training_data=training_data)
    cards.write_card(folder, card)


def plot_loss(log_path, output_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    axis.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    axis.set_xlabel("step")
    axis.set_ylabel("M2D loss (2 - 2 cos)")
    axis.set_title("Further pre-training loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output_path)
    plt.close(figure)


POSITIVE_NUMBER = number_argument("a finite number above 0", lambda value: 0 < value < math.inf)
NON_NEGATIVE_NUMBER = number_argument("a finite number of at least 0", lambda value: 0 <= value < math.inf)
EMA_DECAY = number_argument("a number from 0 to 1", lambda value: 0 <= value <= 1)
MASK_RATIO = number_argument("a number above 0 and below 1", lambda value: 0 < value < 1)


def build_parser(recipe=None):
    """
    The options; a recipe from `recipes.RECIPES` replaces their defaults (explicit options still win). The canonical
    spellings are the Trainer's; the earlier ones (`--init`, `--output-dir`, `--epochs`, ...) keep working, and each
    `dest` stays the earlier name, which recipes and the code below use.
    """
    parser = OneLineErrorParser(
        prog="resp-hf pretrain", description=__doc__, formatter_class=RawDescriptionCanonicalSpellingFormatter
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="set every default to a published run: 'm2d-resp' is the M2D+Resp paper's further pre-training "
        "(see resp_hf/training/recipes.py for each value and its source)",
    )
    parser.add_argument(
        "--model_name_or_path", "--init", dest="init", required=True, help="resp_hf folder, official .pth, or 'scratch'"
    )
    parser.add_argument("--name", help="official-style name for a .pth in a renamed folder")
    parser.add_argument(
        "--encoder_config", type=json.loads, help="JSON RespM2DConfig fields for --model_name_or_path scratch"
    )
    parser.add_argument(
        "--dataset",
        "--data",
        dest="data",
        action="append",
        required=True,
        help="CSV list, folder, saved dataset or hf:<dataset>[@SPLIT], optionally :N (repeatable)",
    )
    parser.add_argument("--audio_column", default="audio", help="audio column of dataset sources")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--norm_stats",
        default="inherit",
        help="'inherit' from --model_name_or_path, 'compute' from random crops of the data (see --norm_stats_crops), "
        "or MEAN,STD written with '=' when the mean is negative: --norm_stats=-7.1,4.2",
    )
    parser.add_argument(
        "--norm_stats_crops",
        type=positive_int,
        default=5000,
        help="random unit-size crops for --norm_stats compute (M2D: 5000)",
    )
    parser.add_argument(
        "--min_seconds",
        type=min_seconds_argument,
        default=0.0,
        help="zero-pad shorter audio to this length before the log-mel (M2D's wav_to_lms.py: 6.1); .npy items "
        "are used as stored",
    )
    parser.add_argument("--predictor_width", type=positive_int, default=512, help="predictor ViT width (M2D: 512)")
    parser.add_argument("--predictor_depth", type=positive_int, default=8, help="predictor blocks (M2D: 8)")
    parser.add_argument("--predictor_heads", type=positive_int, default=16, help="predictor heads (M2D: 16)")
    parser.add_argument("--num_train_epochs", "--epochs", dest="epochs", type=positive_int, default=50)
    parser.add_argument("--max_steps", type=positive_int, help="stop after this many optimizer steps (smoke runs)")
    parser.add_argument(
        "--per_device_train_batch_size",
        "--batch-size",
        dest="batch_size",
        type=positive_int,
        default=64,
        help="per process",
    )
    parser.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    parser.add_argument(
        "--effective_batch_size",
        type=positive_int,
        help="sets --gradient_accumulation_steps to this / (--per_device_train_batch_size x processes), which must "
        "divide it",
    )
    parser.add_argument("--base_lr", type=POSITIVE_NUMBER, default=3e-4, help="scaled by effective batch / 256")
    parser.add_argument(
        "--warmup_epochs", type=NON_NEGATIVE_NUMBER, default=4.0, help="linear warm-up, then cosine decay to 0"
    )
    parser.add_argument(
        "--max_grad_norm",
        "--clip-grad",
        dest="clip_grad",
        type=POSITIVE_NUMBER,
        help="clip the gradient norm to this (default: no clipping)",
    )
    parser.add_argument("--weight_decay", type=NON_NEGATIVE_NUMBER, default=0.05)
    parser.add_argument("--mask_ratio", type=MASK_RATIO, default=0.7)
    parser.add_argument("--ema_start", type=EMA_DECAY, default=0.99995)
    parser.add_argument("--ema_end", type=EMA_DECAY, default=0.99999)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument(
        "--use_cpu", "--cpu", dest="cpu", action="store_true", help="train on CPU processes even when GPUs are present"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dataloader_num_workers", "--num-workers", dest="num_workers", type=non_negative_int, default=2
    )
    parser.add_argument(
        "--save_steps",
        "--save-every",
        dest="save_every",
        type=positive_int,
        default=1000,
        help="save_state every N optimizer steps",
    )
    parser.add_argument("--logging_steps", "--log-every", dest="log_every", type=positive_int, default=10)
    parser.add_argument(
        "--resume_from_checkpoint",
        "--resume",
        dest="resume",
        help="a checkpoint folder, or 'latest' in --output_dir (a damaged latest checkpoint is skipped for the "
        "previous complete one)",
    )
    parser.add_argument(
        "--overwrite_output_dir",
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help="start afresh in an --output_dir that holds an earlier run",
    )
    parser.add_argument(
        "--disable_tqdm",
        "--no-progress",
        dest="no_progress",
        action="store_true",
        help="print log lines instead of a progress bar",
    )
    if recipe:
        defaults = RECIPES[recipe]
        parser.set_defaults(recipe=recipe, **defaults)
        for action in parser._actions:
            action.required = action.required and action.dest not in defaults
    return parser


def parse_args(argv=None):
    """Options with the defaults of `--recipe`, if given."""
    recipe_parser = OneLineErrorParser(prog="resp-hf pretrain", add_help=False)
    recipe_parser.add_argument("--recipe", choices=sorted(RECIPES))
    recipe, _ = recipe_parser.parse_known_args(argv)
    return build_parser(recipe.recipe).parse_args(argv)


def resolve_norm_stats(model, args, items):
    if args.norm_stats == "inherit":
        return
    if args.norm_stats == "compute":
        dataset = LogMelUnits(items, model.config, min_seconds=args.min_seconds)
        mean, std = norm_stats_from_crops(dataset, args.norm_stats_crops, seed=args.seed)
    else:
        mean, std = (float(v) for v in args.norm_stats.split(","))
    model.config.norm_mean, model.config.norm_std = mean, std


def complete_checkpoints(output_dir):
    """`{step: folder}` of the complete checkpoints (a `step-N.partial` folder is a save that did not finish)."""
    folders = (Path(output_dir) / "checkpoints").glob("step-*")
    return {int(p.name.removeprefix("step-")): p for p in folders if p.name.removeprefix("step-").isdigit()}


def checkpoint_problem(folder):
    """What is wrong with a checkpoint folder (a missing, truncated or altered file), or None when it is whole."""
    manifest = Path(folder) / MANIFEST_FILE
    if not manifest.is_file():
        return f"{manifest} is missing (the save did not finish, or an older resp_hf wrote the checkpoint)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{manifest} is unreadable"
    unlisted = sorted(set(path.name for path in Path(folder).iterdir()) - set(files) - {MANIFEST_FILE})
    if unlisted:
        return f"{Path(folder) / unlisted[0]} was not saved with the checkpoint (remove it if you put it there)"
    for name, expected in files.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{path} is truncated or altered ({path.stat().st_size} bytes, {expected['size']} saved)"
        if file_sha256(path) != expected["sha256"]:
            return f"{path} is corrupted (its checksum differs from the saved one)"
    return None


def checkpoint_to_resume(output_dir, resume):
    """
    The folder `--resume` names, checked whole; for 'latest', the highest complete step, skipping damaged ones with a
    warning that names the bad file.
    """
    if resume != "latest":
        problem = checkpoint_problem(resume)
        if problem:
            raise ValueError(f"Cannot resume from {resume}: {problem}.")
        return Path(resume)
    saved = complete_checkpoints(output_dir)
    if not saved:
        raise FileNotFoundError(f"No complete checkpoint under {output_dir}/checkpoints to resume from.")
    problems = []
    for step in sorted(saved, reverse=True):
        problem = checkpoint_problem(saved[step])
        if problem is None:
            for skipped in problems:
                logger.warning(f"Skipping a damaged checkpoint: {skipped}. Resuming from {saved[step]} instead.")
            return saved[step]
        problems.append(problem)
    raise ValueError(f"No undamaged checkpoint under {output_dir}/checkpoints to resume from: {'; '.join(problems)}.")


def set_aside_later_checkpoints(output_dir, step):
    """
    Moves the checkpoints past `step` (left by the run now resumed from an earlier step) to `checkpoints/superseded/`,
    so that `--resume latest` cannot pick them; returns the moved folders.
    """
    later = [folder for saved, folder in sorted(complete_checkpoints(output_dir).items()) if saved > step]
    moved = []
    for folder in later:
        target = folder.parent / "superseded" / folder.name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(exist_ok=True)
        moved.append(folder.rename(target))
    return moved


def save_checkpoint(accelerator, output_dir, state, scheduler, settings):
    """
    `save_state` plus the project's state into `checkpoints/step-N.partial`; once every process has written its part,
    the manifest of sizes and checksums, then the rename to `step-N`. `settings` (from `run_settings`) go with the
    project's state, for `check_resumed_settings`.
    """
    checkpoint = Path(output_dir) / "checkpoints" / f"step-{state.step}"
    partial = checkpoint.with_name(checkpoint.name + PARTIAL)
    accelerator.save_state(str(partial))
    save_file(random_states(), partial / RNG_STATE_FILE.format(accelerator.process_index))
    if accelerator.is_main_process:
        saved = {**state.state_dict(), "scheduler": scheduler.state_dict(), "settings": settings}
        (partial / TRAIN_STATE_FILE).write_text(json.dumps(saved))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {
            path.name: {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(partial.iterdir())
            if path.is_file()
        }
        write_text_atomically(partial / MANIFEST_FILE, json.dumps({"step": state.step, "files": files}, indent=1))
        shutil.rmtree(checkpoint, ignore_errors=True)  # left by an earlier run that went past the resumed step
        partial.rename(checkpoint)
    accelerator.wait_for_everyone()


def load_checkpoint_state(accelerator, folder, state, scheduler):
    """
    Restores a checkpoint without unpickling objects: Accelerate reads the weights (safetensors) and the optimizer
    (weights-only); the counters, schedule and random generators come from JSON and safetensors.
    """
    try:
        accelerator.load_state(str(folder))
    except pickle.UnpicklingError as error:  # a file whose manifest entry was rewritten with it
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"{folder} holds a file that is not plain tensors, which is not unpickled: {reason}") from None
    saved = json.loads((folder / TRAIN_STATE_FILE).read_text())
    state.load_state_dict(saved)
    scheduler.load_state_dict(saved["scheduler"])
    rng_path = folder / RNG_STATE_FILE.format(accelerator.process_index)
    if not rng_path.is_file():
        raise ValueError(f"{rng_path} is missing: resume with as many processes as the run that saved {folder}.")
    restore_random_states(load_file(rng_path))


def random_states():
    """This process's torch generators (CPU and every GPU), which draw the masks."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda_{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_random_states(states):
    torch.set_rng_state(states["cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([states[f"cuda_{i}"] for i in range(torch.cuda.device_count())])


def continues_run_in(output_dir: Path, resume: str | None) -> bool:
    """Whether `--resume` continues the run in `output_dir`: 'latest', or one of its checkpoints (links resolved)."""
    return resume == "latest" or (resume is not None and is_within(resume, output_dir))


def check_output_dir(output_dir: Path, args: argparse.Namespace) -> None:
    """
    Refuses an earlier run's folder unless the run continues it (with a readable training log) or --overwrite
    replaces it (the refusal advises --resume only when the folder holds a checkpoint); a checkpoint of another run
    is resumed into a non-empty folder only with --overwrite. The folder may hold none of the run's inputs, and none
    of the outputs the run replaces may hold the current folder.
    """
    for name in RUN_OUTPUTS:
        check_holds_no_current_folder(output_dir / name)
    if continues_run_in(output_dir, args.resume):
        if args.overwrite:
            raise ValueError("--resume continues the run in --output-dir and --overwrite replaces it: pass only one.")
        if (output_dir / LOG_FILE).exists():
            read_log(output_dir / LOG_FILE)
        return
    init = () if args.init == "scratch" else (args.init,)
    inputs = (*init, *(parse_source(spec)[0] for spec in args.data if not spec.startswith("hf:")))  # Hub ids: not here
    resumable = not args.resume and complete_checkpoints(output_dir)
    option = "--resume latest to continue it, or --overwrite" if resumable else "--overwrite"
    try:
        check_output_folder(output_dir, args.overwrite, option=option, name="--output-dir", inputs=inputs)
    except ValueError as error:
        if not args.resume:
            raise
        raise ValueError(f"Cannot resume {args.resume}, which is not in --output-dir: {error}") from None


def ignore_stop_signals(worker_id):
    """
    DataLoader workers ignore Ctrl-C and SIGTERM sent to the whole process group (a terminal, Slurm): the main process
    saves a checkpoint on them, which needs its workers alive.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class PretrainingRun:
    """What `setup` prepares for the loop: the prepared model, optimizer and loader, and the run's plan."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dataset: LogMelUnits
    loader: torch.utils.data.DataLoader
    total_steps: int
    settings: dict  # what `run_settings` records in each checkpoint
    resume_from: Path | None
    summary: str  # printed once the run starts


def setup(args: argparse.Namespace) -> PretrainingRun:
    """
    Checks --resume and --output-dir, builds the accelerator, data, model, optimizer and schedule, and checks that
    the checkpoint to resume was saved with the same settings; only then does --overwrite remove the earlier run.
    """
    processes = PartialState(cpu=args.cpu)
    output_dir = Path(args.output_dir)
    resume_from = checkpoint_to_resume(output_dir, args.resume) if args.resume else None
    check_output_dir(output_dir, args)
    accumulation = gradient_accumulation_steps(args, processes.num_processes)
    accelerator = Accelerator(
        cpu=args.cpu,
        gradient_accumulation_steps=accumulation,
        mixed_precision=args.mixed_precision,
        log_with=tensorboard_or_none(),
        project_dir=args.output_dir,
        # epoch order = f(seed, epoch), the same on every process whatever its own seed
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    set_seed(args.seed)  # the same initial weights on every process
    items = [item for spec in args.data for item in read_source(spec, args.audio_column)]
    predictor = predictor_config(args.predictor_width, args.predictor_depth, args.predictor_heads)
    model, notes = build_model(args.init, args.encoder_config, args.name, predictor)
    config = model.config
    visible_patches(config.num_frequency_patches * config.time_patches_per_chunk, args.mask_ratio)  # before any step
    resolve_norm_stats(model, args, items)
    dataset = LogMelUnits(items, model.config, seed=args.seed, min_seconds=args.min_seconds)
    loader = training_loader(dataset, args)
    effective_batch = args.batch_size * accumulation * accelerator.num_processes
    learning_rate = args.base_lr * effective_batch / 256
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes / accumulation)
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    settings = run_settings(args, model, len(dataset), accelerator.num_processes, accumulation, total_steps)
    if resume_from:
        notes += check_resumed_settings(resume_from, settings)
    if args.overwrite and accelerator.is_main_process:
        remove_outputs(output_dir, RUN_OUTPUTS)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=learning_rate, betas=(0.9, 0.95))
    # Stepped by train_step once per optimizer step (a prepared scheduler would step once per process).
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_epochs * steps_per_epoch), total_steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    set_seed(args.seed, device_specific=True)  # different masks on every process
    plan = (
        f"M2D further pre-training: {len(dataset)} clips, effective batch {effective_batch}, "
        f"lr {learning_rate:.2e}, {total_steps} steps"
    )
    if args.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_bf16_kernels():
        notes.append(BF16_EMULATED)
    summary = "\n".join([plan, *notes])
    return PretrainingRun(
        accelerator, model, optimizer, scheduler, dataset, loader, total_steps, settings, resume_from, summary
    )


def run_settings(
    args: argparse.Namespace,
    model: M2DPretrainingModel,
    clips: int,
    processes: int,
    accumulation: int,
    total_steps: int,
) -> dict:
    """The run's settings that decide its losses step by step (see `ENCODER_SETTINGS`), and its planned steps."""
    encoder, predictor = model.config.to_dict(), model.predictor.config
    return {
        **{f"encoder.{key}": encoder[key] for key in ENCODER_SETTINGS},
        "predictor_width": predictor.hidden_size,
        "predictor_depth": predictor.num_hidden_layers,
        "predictor_heads": predictor.num_attention_heads,
        "clips": clips,
        "processes": processes,
        "gradient_accumulation_steps": accumulation,
        **{name: getattr(args, name) for name in OPTION_SETTINGS},
        "total_steps": total_steps,
    }


def check_resumed_settings(checkpoint: Path, settings: dict) -> list[str]:
    """
    Refuses a checkpoint saved with other settings (the run would not continue with the same losses); returns a note
    when only the planned number of steps differs, or when the checkpoint records no settings.
    """
    saved = json.loads((checkpoint / TRAIN_STATE_FILE).read_text()).get("settings")
    if saved is None:
        return [f"{checkpoint} records no settings (an earlier resp_hf saved it): they are not checked"]
    settings = json.loads(json.dumps(settings))  # tuples as lists, as saved
    differ = [
        f"{key} {value} (saved: {saved[key]})"
        for key, value in settings.items()
        if key in saved and key != "total_steps" and value != saved[key]
    ]
    if differ:
        raise ValueError(
            f"Cannot resume from {checkpoint}: it was saved with other settings, which change the next losses: "
            f"{', '.join(differ)}. Resume with the saved values, or start a new run in another --output-dir."
        )
    if settings["total_steps"] != saved.get("total_steps"):
        return [
            f"{settings['total_steps']} steps instead of the {saved.get('total_steps')} the saved run planned: the "
            "learning rate and EMA decay follow the new length"
        ]
    return []


def training_loader(dataset: LogMelUnits, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """
    Shuffled full batches, or in place of one the error of a clip that could not be read; the workers leave stop
    signals to the main process.
    """
    loader = torch.utils.data.DataLoader(
        ErrorsAsItems(dataset),
        batch_size=args.batch_size,
        collate_fn=batch_or_error,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} clips are fewer than one batch of {args.batch_size}.")
    return loader


class ErrorsAsItems(torch.utils.data.Dataset):
    """
    `dataset` with the error of an item that cannot be read in its place, for the training loop to raise in the main
    process: raised in a DataLoader worker, it would come wrapped in the worker's traceback, and keep the workers
    (which ignore SIGTERM) and so the run alive after it failed. An error other than a `ValueError` (a bug, not bad
    data) carries the worker's traceback as a note, which passing it to the main process would otherwise lose.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor | Exception:
        try:
            return self.dataset[index]
        except Exception as error:
            if not isinstance(error, ValueError) and torch.utils.data.get_worker_info() is not None:
                error.add_note(f"Raised in a DataLoader worker:\n{traceback.format_exc().rstrip()}")
            return error


def batch_or_error(items: list) -> torch.Tensor | Exception:
    """The batch of `items`, or the first error among them (see `ErrorsAsItems`)."""
    errors = [item for item in items if isinstance(item, Exception)]
    return errors[0] if errors else torch.utils.data.default_collate(items)


def resume(run: PretrainingRun, state: TrainState, output_dir: Path) -> None:
    """
    Restores `run.resume_from` into the run and `state`, then forgets what the interrupted run did past that step:
    its log rows, and its later checkpoints (set aside).
    """
    accelerator = run.accelerator
    load_checkpoint_state(accelerator, run.resume_from, state, run.scheduler)
    CsvLog(output_dir / LOG_FILE, accelerator.is_main_process).drop_after(state.step)
    if accelerator.is_main_process:
        for folder in set_aside_later_checkpoints(output_dir, state.step):
            accelerator.print(f"Moved {folder.name}, past the resumed step {state.step}, to {folder.parent}.")
    accelerator.wait_for_everyone()


def epoch_batches(run: PretrainingRun, state: TrainState) -> Iterable[torch.Tensor]:
    """The batches of `state.epoch` (an order fixed by the seed and the epoch), past those a resumed run used."""
    run.dataset.set_epoch(state.epoch)
    run.loader.set_epoch(state.epoch)
    if state.batches_in_epoch:
        return run.accelerator.skip_first_batches(run.loader, state.batches_in_epoch)
    return run.loader


def train_step(run: PretrainingRun, state: TrainState, chunks: torch.Tensor, args: argparse.Namespace) -> dict | None:
    """
    Forward and backward of one batch; at the end of each accumulation window also the optimizer, the learning rate
    schedule and the EMA target. Returns that step's loss, learning rate and EMA decay, or None while accumulating.
    """
    accelerator, model = run.accelerator, run.model
    state.batches_in_epoch += 1
    with accelerator.accumulate(model):
        loss = model(chunks, args.mask_ratio)[0]
        check_loss_is_finite(accelerator, loss, state.step + 1)
        accelerator.backward(loss)
        if args.clip_grad and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), args.clip_grad)
        run.optimizer.step()
        run.optimizer.zero_grad()
    if not accelerator.sync_gradients:
        return None
    run.scheduler.step()
    decay = ema_decay(state.step, run.total_steps, args.ema_start, args.ema_end)
    accelerator.unwrap_model(model).update_target(decay)
    state.step += 1
    return {"loss": loss.detach(), "lr": run.scheduler.get_last_lr()[0], "ema_decay": decay}


def check_loss_is_finite(accelerator: Accelerator, loss: torch.Tensor, step: int) -> None:
    """Stops every process before the weights are updated when the loss is NaN or Inf on any of them."""
    if not torch.isfinite(accelerator.gather(loss.detach()[None])).all():
        raise ValueError(
            f"The loss is NaN or Inf at step {step}: training stopped before that step changed the weights "
            "(non-finite input data, or too high a learning rate); fix the cause and resume from the last checkpoint."
        )


class TrainingProgress:
    """
    The run's outputs as it goes: the plan, a progress bar, and at step 1 and every --log-every steps a CSV row
    (`training_log.csv`), TensorBoard scalars and, with --no-progress, a printed line.
    """

    def __init__(self, run: PretrainingRun, args: argparse.Namespace, step: int):
        accelerator = self.accelerator = run.accelerator
        hyperparameters = {key: value for key, value in vars(args).items() if isinstance(value, (int, float, str))}
        accelerator.init_trackers("pretrain", config=hyperparameters)
        accelerator.print(run.summary)
        self.log = CsvLog(Path(args.output_dir) / LOG_FILE, accelerator.is_main_process)
        self.log_every, self.print_lines, self.total_steps = args.log_every, args.no_progress, run.total_steps
        self.bar = tqdm(
            total=run.total_steps,
            initial=step,
            desc="Pre-training",
            disable=args.no_progress or not accelerator.is_local_main_process,
        )
        self.interval_start, self.interval_samples = time.time(), 0

    def add_batch(self, chunks: torch.Tensor) -> None:
        self.interval_samples += chunks.shape[0] * self.accelerator.num_processes

    def step_done(self, state: TrainState, metrics: dict) -> None:
        self.bar.update(1)
        if state.step % self.log_every and state.step != 1:
            return
        loss = self.accelerator.gather(metrics["loss"][None]).mean().item()  # the mean over processes
        throughput = self.interval_samples / (time.time() - self.interval_start)  # since the previous log line
        self.interval_start, self.interval_samples = time.time(), 0
        values = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": metrics["lr"]}
        values |= {"ema_decay": metrics["ema_decay"], "samples_per_second": throughput}
        self.log.write(values)
        self.accelerator.log(values, step=state.step)
        self.bar.set_postfix(loss=f"{loss:.4f}", samples_per_second=f"{throughput:.1f}")
        if self.print_lines:
            self.accelerator.print(f"step {state.step}/{self.total_steps} loss {loss:.4f} {throughput:.1f} samples/s")

    def close(self) -> None:
        """Closes the bar, then the trackers once every process is done."""
        self.bar.close()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def export_run(run: PretrainingRun, args: argparse.Namespace, state: TrainState) -> None:
    """The online encoder as `--output-dir/encoder` and the loss curve as `loss.png` (main process)."""
    output_dir = Path(args.output_dir)
    if run.accelerator.is_main_process:
        export_encoder(run.accelerator.unwrap_model(run.model), output_dir / ENCODER_FOLDER, args, state.step)
        if (output_dir / LOG_FILE).is_file():
            plot_loss(output_dir / LOG_FILE, output_dir / "loss.png")
    run.accelerator.print(f"Exported the online encoder to {output_dir / ENCODER_FOLDER}")


def train(args: argparse.Namespace) -> int:
    """Runs pre-training and exports the encoder; returns the number of the signal that interrupted it, or 0."""
    output_dir = Path(args.output_dir)
    run = setup(args)
    accelerator, total_steps = run.accelerator, run.total_steps
    state = TrainState()  # saved by save_checkpoint, not registered with Accelerate (which would pickle it)
    if run.resume_from:
        resume(run, state, output_dir)
    progress = TrainingProgress(run, args, state.step)
    saved_step = state.step if args.resume else None
    stopped = 0  # the signal that stopped training, agreed on by every process
    with stop_requests() as stop:
        while state.step < total_steps and not stopped:
            for chunks in epoch_batches(run, state):
                if isinstance(chunks, Exception):
                    raise chunks  # a clip that could not be read
                metrics = train_step(run, state, chunks, args)
                progress.add_batch(chunks)
                if metrics is None:
                    continue  # gradients still accumulating
                progress.step_done(state, metrics)
                stopped = agreed_stop_signal(accelerator, stop)
                finished = stopped or state.step >= total_steps
                if finished or state.step % args.save_every == 0:
                    save_checkpoint(accelerator, output_dir, state, run.scheduler, run.settings)
                    saved_step = state.step
                if finished:
                    break
            else:  # the epoch ran out before the last step
                state.next_epoch()
                stopped = agreed_stop_signal(accelerator, stop)
        if stopped and saved_step != state.step:  # the request came as the epoch ended
            save_checkpoint(accelerator, output_dir, state, run.scheduler, run.settings)
    progress.close()
    if stopped:
        accelerator.print(
            f"Interrupted: saved step {state.step} to {output_dir}/checkpoints; resume with --resume latest"
        )
        return stopped
    export_run(run, args, state)
    return 0


def gradient_accumulation_steps(args, num_processes):
    """--gradient-accumulation-steps, or the number that makes --effective-batch-size (which it must divide)."""
    if not args.effective_batch_size:
        return args.gradient_accumulation_steps
    per_step = args.batch_size * num_processes
    if args.effective_batch_size % per_step:
        raise ValueError(
            f"--effective-batch-size {args.effective_batch_size} is not a multiple of --batch-size {args.batch_size} "
            f"x {num_processes} processes = {per_step}; choose a --batch-size that divides it."
        )
    return args.effective_batch_size // per_step


def tensorboard_or_none():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return "tensorboard"


class CsvLog:
    """Appends training metrics to a CSV (main process only)."""

    def __init__(self, path, enabled):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, values):
        if not self.enabled:
            return
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(values)

    def drop_after(self, step):
        """Removes the rows of steps after `step`, left by a run that went past the checkpoint being resumed."""
        if not self.enabled or not self.path.is_file():
            return
        rows = read_log(self.path)
        with atomic_file(self.path) as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(row for row in rows if int(row["step"]) <= step)


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of a training log; one that `CsvLog` did not write whole is refused, naming the file and the line."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != list(LOG_FIELDS):
                header = ",".join(reader.fieldnames or [])
                raise ValueError(f"its first line is {header!r}, not {','.join(LOG_FIELDS)!r}")
            rows = []
            for row in reader:
                if not is_log_row(row):
                    raise ValueError(f"line {reader.line_num} is not {len(LOG_FIELDS)} numbers")
                rows.append(row)
    except (ValueError, csv.Error) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path} is damaged ({error}): repair or remove it.") from None
    return rows


def is_log_row(row: dict) -> bool:
    """Whether a row of the log holds a step number and a number in every other field."""
    return None not in row and str(row["step"]).isdigit() and all(is_number(row[field]) for field in LOG_FIELDS)


def is_number(text: str | None) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


@contextlib.contextmanager
def stop_requests():
    """While active, SIGTERM and Ctrl-C only record their signal number (the loop then saves and stops)."""
    stop = {"signal": 0}

    def request_stop(signum, frame):
        stop["signal"] = signum

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def agreed_stop_signal(accelerator, stop):
    """The signal of a stop request on any process (0 if none), the same on all, so that all stop at one step."""
    received = torch.tensor([stop["signal"]], device=accelerator.device)
    return int(accelerator.gather(received).max())


def main(argv=None):
    """Returns 0, or 128 + the signal number when interrupted (130 for Ctrl-C, 143 for SIGTERM), as shells do."""
    stopped = train(parse_args(argv))
    return 128 + stopped if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
