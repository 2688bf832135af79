"""Fine-tune an M2D encoder (or classifier) on any audio dataset with the Hugging Face Trainer.

    resp-hf finetune --model_name_or_path ./resp-m2d --dataset ./my_recordings --output_dir ./resp-m2d-copd

`--dataset` is a folder of labelled recordings (`<class>/<files>`, optionally under train/validation/test), a
DatasetDict saved with `save_to_disk`, or a Hub dataset name. Every `TrainingArguments` option can be passed too
(`--learning_rate`, `--num_train_epochs`, `--per_device_train_batch_size`, `--bf16`, ...).

The output folder gets the best model, its feature extractor, the remote code, a model card and `results.json`.
Trainer's checkpoints go to `OUTPUT/checkpoints/` (`--resume_from_checkpoint latest` continues an interrupted run)
and are deleted once the run ends, unless `--keep_checkpoints`. Each records the run's settings
(`finetune_settings.json`); resuming first checks the checkpoint's files and that the settings are the same. Ties of
the best-model metric between evaluations are broken by the lower validation loss.
"""

import argparse
import json
import logging
import math
import pickle
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Audio, ClassLabel, Sequence, Value
from safetensors import SafetensorError, safe_open
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from .. import cards
from ..audio import SEGMENT_KEYS, decode_audio
from ..cli import OneLineErrorParser
from ..data import load_any_dataset
from ..lora import LORA_TARGET_MODULES, add_lora
from ..metrics import build_compute_metrics
from ..models.resp_m2d import RespM2DFeatureExtractor, RespM2DForAudioClassification
from ..models.resp_m2d.configuration_resp_m2d import POOLING_MODES
from ..output_folders import check_output_folder, is_within, remove_outputs
from ..splits import check_disjoint_splits, check_split_labels, seeded_split

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
# What a run writes into the output folder besides the model files (removed first by --overwrite_output_dir).
RUN_OUTPUTS = ("results.json", "README.md", "adapter", CHECKPOINTS_DIR)
# What a run writes into each of its checkpoints, for a resumed run to check that it has the same settings.
SETTINGS_NAME = "finetune_settings.json"
# The options that shape the model or the optimizer's parameter groups but are not in the model config.
RECORDED_OPTIONS = ("layer_decay", "lora_rank", "lora_alpha")
# Config entries that may differ between a checkpoint and the run resuming it (`label2id` follows `id2label`).
UNCOMPARED_CONFIG_KEYS = ("_name_or_path", "architectures", "transformers_version", "label2id")
# The model files Trainer resumes from (one of them), as `Trainer._load_from_checkpoint` looks for them.
MODEL_FILES = (
    SAFE_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    ADAPTER_WEIGHTS_NAME,
)


@dataclass
class FinetuneArguments:
    """What to fine-tune on what; training hyper-parameters come from `TrainingArguments`."""

    model_name_or_path: str = field(metadata={"help": "converted encoder or classifier folder, or a Hub repo id"})
    dataset: str = field(metadata={"help": "audio folder, save_to_disk folder, or Hub dataset name"})
    audio_column: str = field(
        default="audio",
        metadata={"help": "column with file paths or audio dicts (without it: 'path', 'start', 'end' segment columns)"},
    )
    label_column: str = field(default="label", metadata={"help": "ClassLabel, Sequence(ClassLabel) or float column"})
    train_split: str = field(default="train")
    eval_split: str = field(default="validation", metadata={"help": "carved out of train when the dataset lacks it"})
    test_split: str = field(default="test", metadata={"help": "evaluated at the end when present"})
    validation_fraction: float = field(
        default=0.2, metadata={"help": "share of train held out when there is no eval split"}
    )
    pooling: str = field(default="frequency", metadata={"help": "embedding the head reads", "choices": POOLING_MODES})
    classifier_layer: str = field(
        default=None,
        metadata={
            "help": "None (final output), a layer in the original M2D numbering (0..L-1, -1 = last), or 'weighted'"
        },
    )
    freeze_encoder: bool = field(default=False, metadata={"help": "train only the head (linear probing)"})
    layer_decay: float = field(default=1.0, metadata={"help": "layer-wise learning-rate decay (1.0: none)"})
    downmix: bool = field(default=False, metadata={"help": "average the channels of multichannel recordings"})
    lora_rank: int = field(
        default=None,
        metadata={"help": "train LoRA adapters of this rank on the attention and MLP projections (peft extra)"},
    )
    lora_alpha: float = field(default=None, metadata={"help": "LoRA scaling numerator (default: 2 x rank)"})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "write into a non-empty output folder, replacing its run", "aliases": ["--overwrite"]},
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep Trainer's checkpoints (with optimizer state) in OUTPUT/checkpoints"}
    )


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults suited to audio fine-tuning: evaluate and save every epoch, keep the best."""

    eval_strategy: str = field(default="epoch")
    save_strategy: str = field(default="epoch")
    logging_strategy: str = field(default="epoch")
    load_best_model_at_end: bool = field(default=True)
    save_total_limit: int = field(default=2)
    remove_unused_columns: bool = field(default=False)
    report_to: str = field(default="none")
    metric_for_best_model: str = field(
        default="auto",
        metadata={
            "help": "metric that picks the best epoch; auto: auroc, or mae for regression (with any other, "
            "set --greater_is_better as usual)"
        },
    )
    dataloader_pin_memory: bool = field(default_factory=torch.cuda.is_available)

    def __post_init__(self):
        if self.eval_strategy in ("no", None) and self.load_best_model_at_end:
            logger.info("No evaluation during training (--eval_strategy no): the last model is kept, not the best.")
            self.load_best_model_at_end = False
        super().__post_init__()


def label_task(feature, column):
    """`(problem_type, label names or None)` from the label column's feature type."""
    if isinstance(feature, ClassLabel):
        return "single_label_classification", feature.names
    if isinstance(feature, (Sequence, list)):
        inner = feature.feature if isinstance(feature, Sequence) else feature[0]
        if isinstance(inner, ClassLabel):
            return "multi_label_classification", inner.names
    if isinstance(feature, Value) and feature.dtype.startswith("float"):
        return "regression", None
    raise ValueError(
        f"Label column {column!r} has type {feature}; use ClassLabel (single-label), Sequence(ClassLabel) "
        "(multi-label) or a float Value (regression)."
    )


class AudioClassificationCollator:
    """Decodes a batch's audio (soundfile + soxr), extracts padded log-mel features and builds the labels."""

    def __init__(self, feature_extractor, audio_column, label_column, problem_type, num_labels, downmix=False):
        self.feature_extractor = feature_extractor
        self.audio_column = audio_column
        self.label_column = label_column
        self.problem_type = problem_type
        self.num_labels = num_labels
        self.downmix = downmix

    def __call__(self, rows):
        rate = self.feature_extractor.sampling_rate
        audio = [decode_audio(audio_value(row, self.audio_column), rate, downmix=self.downmix) for row in rows]
        batch = self.feature_extractor(audio, sampling_rate=rate)
        batch["labels"] = self.labels([row[self.label_column] for row in rows])
        return batch

    def labels(self, values):
        if self.problem_type == "single_label_classification":
            return torch.tensor(values, dtype=torch.long)
        if self.problem_type == "multi_label_classification":
            multi_hot = torch.zeros(len(values), self.num_labels)
            for row, active in enumerate(values):
                multi_hot[row, list(active)] = 1.0
            return multi_hot
        return torch.tensor(values, dtype=torch.float32)


def audio_value(row, audio_column):
    """A row's audio: its `audio_column`, or else the recording segment its `path`, `start` and `end` columns name."""
    if audio_column in row:
        return row[audio_column]
    return {key: row[key] for key in SEGMENT_KEYS}


def layer_wise_parameter_groups(model, learning_rate, layer_decay, weight_decay):
    """
    AdamW parameter groups with layer-wise learning-rate decay: the head and final norm get `learning_rate`, block k
    of N gets `learning_rate * layer_decay ** (N - k)`, the embeddings `learning_rate * layer_decay ** (N + 1)`.
    Biases, norms, the CLS token and the positional table get no weight decay.
    """
    depth = model.config.num_hidden_layers
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("resp_m2d.embeddings."):
            layer = 0
        elif name.startswith("resp_m2d.encoder.layer."):
            layer = int(name.split(".")[3]) + 1
        else:
            layer = depth + 1
        no_decay = parameter.ndim == 1 or name.endswith(("cls_token", "position_embeddings"))
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "lr": learning_rate * layer_decay ** (depth + 1 - layer),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(parameter)
    return list(groups.values())


# The eval carve-out's seed, drawn through numpy's default_rng as datasets' `Dataset.train_test_split(seed=42)` did
# (and fine-tuning used) before `resp_hf.splits`, so that the held-out rows stay the same.
VALIDATION_SEED = 42


def prepare_splits(dataset, args):
    """
    Train/eval(/test) splits; when the eval split is absent, `args.validation_fraction` of train is carved out with
    `VALIDATION_SEED` (stratified for a ClassLabel column).
    """
    columns = dataset[args.train_split].column_names
    if args.label_column not in columns:
        raise ValueError(f"Column {args.label_column!r} not in the dataset: {columns}.")
    if args.audio_column not in columns and not set(SEGMENT_KEYS) <= set(columns):
        raise ValueError(
            f"Column {args.audio_column!r} not in the dataset: {columns}. Pass --audio_column, or give segment "
            f"columns {list(SEGMENT_KEYS)} (seconds) as the ICBHI and SPRSound task datasets have."
        )
    if args.audio_column in columns and isinstance(dataset[args.train_split].features[args.audio_column], Audio):
        dataset = dataset.cast_column(args.audio_column, Audio(decode=False))  # decoded by the collator instead
    train = dataset[args.train_split]
    if args.eval_split in dataset:
        evaluation = dataset[args.eval_split]
    else:
        train, evaluation = carve_evaluation_split(train, args)
    return train, evaluation, dataset.get(args.test_split)


def carve_evaluation_split(train, args):
    """`(train, evaluation)`: `args.validation_fraction` of the rows held out, stratified for a ClassLabel column."""
    labels = list(train[args.label_column])
    stratify = labels if isinstance(train.features[args.label_column], ClassLabel) else None
    fraction = args.validation_fraction
    try:
        kept, held_out = seeded_split(
            len(labels), fraction, VALIDATION_SEED, stratify=stratify, generator="default_rng"
        )
    except ValueError as error:
        raise ValueError(
            f"Cannot carve a {fraction:.0%} {args.eval_split!r} split out of the {len(labels)} rows of "
            f"{args.train_split!r}: {error} Add recordings, change --validation_fraction or give the dataset an "
            f"{args.eval_split!r} split."
        ) from error
    return train.select(kept), train.select(held_out)


def parse_classifier_layer(value):
    """`--classifier_layer`: None (the final output), "weighted", or a layer number (original M2D numbering)."""
    if value in (None, "None", "none"):
        return None
    if value == "weighted":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--classifier_layer must be None, 'weighted' or a layer index, got {value!r}.") from None


def check_training_arguments(training_args: TrainingArguments) -> None:
    """
    Refuses, before anything is loaded, batch sizes, loader workers and a learning rate that Trainer would reject only
    once the model is loaded, and a run that would train nothing (no epochs, no --max_steps).
    """
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(training_args, name)}.")
    if training_args.dataloader_num_workers < 0:  # 0: load in the main process
        raise ValueError(f"--dataloader_num_workers must be at least 0, got {training_args.dataloader_num_workers}.")
    if not 0 < training_args.learning_rate < math.inf:
        raise ValueError(f"--learning_rate must be a finite number above 0, got {training_args.learning_rate}.")
    if training_args.max_steps <= 0 and not 0 < training_args.num_train_epochs < math.inf:
        raise ValueError(
            f"--num_train_epochs must be a finite number above 0 when --max_steps does not set the length, got "
            f"{training_args.num_train_epochs}."
        )


def prepare_output_dir(output_dir: Path, overwrite: bool, checkpoint: Path | None) -> bool:
    """
    Refuses to mix a new run into a folder that holds files, unless resuming one of its own checkpoints or told to
    overwrite (advising to resume only when the folder holds a checkpoint). Returns whether the run replaces the
    folder's earlier run (a run resumed from another folder's checkpoint is a new run here): the caller removes its
    outputs (`RUN_OUTPUTS`) once every check has passed, so that nothing of it is taken for the new run.
    """
    own = checkpoint is not None and is_within(checkpoint, output_dir / CHECKPOINTS_DIR)
    if checkpoint is not None and not own:
        option = f"--overwrite_output_dir (resuming from {checkpoint}, which is not one of its checkpoints)"
    elif latest_checkpoint(output_dir) is not None:
        option = "--resume_from_checkpoint latest to continue its run, or --overwrite_output_dir"
    else:
        option = "--overwrite_output_dir"
    check_output_folder(output_dir, overwrite or own, option=option, name="--output_dir")
    return overwrite and not own


def check_classes(train, label_column, problem_type, names, source):
    """Refuses, before training, a single-label dataset whose training split holds fewer than two classes."""
    if problem_type != "single_label_classification":
        return
    present = sorted({names[label] for label in train[label_column]})
    if len(present) < 2:
        raise ValueError(
            f"The training data of {source} has recordings of {present or 'no class'} only (classes: {names}): "
            "a classifier needs recordings of at least two classes."
        )


class BreakTiesByLossCallback(TrainerCallback):
    """
    Makes an evaluation whose best-model metric ties the best so far count as the new best when its validation
    loss is lower (Trainer keeps the first of equal scores: with small data AUROC often ties at 1.0).
    """

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        key = args.metric_for_best_model
        key = key if key.startswith("eval_") else f"eval_{key}"
        if key == "eval_loss" or state.best_metric is None or metrics.get(key) != state.best_metric:
            return
        best_rows = [row for row in state.log_history if row.get("step") == state.best_global_step]
        best_loss = next((row["eval_loss"] for row in best_rows if "eval_loss" in row), None)
        if best_loss is not None and metrics.get("eval_loss", math.inf) < best_loss:
            # One step below the tie, so that Trainer's strict comparison takes this evaluation as the best.
            state.best_metric = math.nextafter(state.best_metric, -math.inf if args.greater_is_better else math.inf)


def check_lora_settings(args):
    """Refuses LoRA settings that would be ignored, before anything is loaded; needs the `peft` extra."""
    if args.lora_rank < 1:
        raise ValueError(f"--lora_rank must be at least 1, got {args.lora_rank}.")
    if args.freeze_encoder or args.layer_decay != 1.0 or args.classifier_layer == "weighted":
        raise ValueError(
            "--lora_rank cannot be combined with --freeze_encoder, --layer_decay or --classifier_layer weighted: "
            "LoRA trains only the adapters and the head."
        )
    import peft  # noqa: F401  (a missing extra is reported before the data and model are loaded)


def load_feature_extractor(model_name_or_path, config):
    """The model folder's feature extractor, checked against its config; a folder without one gets the config's."""
    try:
        feature_extractor = RespM2DFeatureExtractor.from_pretrained(model_name_or_path)
    except OSError:  # no preprocessor_config.json
        return RespM2DFeatureExtractor.from_model_config(config)
    feature_extractor.check_matches(config)
    return feature_extractor


def resume_checkpoint(value):
    """`--resume_from_checkpoint`: None, True for the latest checkpoint ("latest"/"true"), or a checkpoint path."""
    if value in (None, "", "false", "False"):
        return None
    return True if value in ("latest", "true", "True") else value


def latest_checkpoint(output_dir: Path) -> str | None:
    """The latest checkpoint in `output_dir/checkpoints`, or None."""
    checkpoints = output_dir / CHECKPOINTS_DIR
    return get_last_checkpoint(checkpoints) if checkpoints.is_dir() else None


def checkpoint_to_resume(output_dir: Path, resume: str | bool) -> Path:
    """The checkpoint folder `--resume_from_checkpoint` names (True: the latest in `output_dir/checkpoints`)."""
    if resume is not True:
        return Path(resume)
    latest = latest_checkpoint(output_dir)
    if latest is None:
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: there is no checkpoint in {output_dir / CHECKPOINTS_DIR}."
        )
    return Path(latest)


def check_checkpoint(checkpoint: Path) -> None:
    """Refuses, before anything is loaded, a checkpoint folder that is missing, incomplete or has a damaged file."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {checkpoint}: no such checkpoint folder.")
    if not (checkpoint / TRAINER_STATE_NAME).is_file():
        raise ValueError(f"{checkpoint} is not a Trainer checkpoint: it has no {TRAINER_STATE_NAME}.")
    if not any((checkpoint / name).is_file() for name in MODEL_FILES):
        raise ValueError(f"{checkpoint} holds no model weights ({SAFE_WEIGHTS_NAME} or {ADAPTER_SAFE_WEIGHTS_NAME}).")
    for path in sorted(checkpoint.iterdir()):
        problem = file_problem(path)
        if problem:
            raise ValueError(f"{path} is damaged ({problem}). Resume from another checkpoint, or start the run again.")


def file_problem(path: Path) -> str | None:
    """
    What is wrong with a checkpoint file that Trainer reads when resuming (JSON, safetensors, weights-only torch
    files), or None; reads only headers and pickles of plain data (no code runs), never `training_args.bin`.
    """
    if path.suffix == ".json":
        try:
            return None if isinstance(json.loads(path.read_text()), dict) else "not a JSON object"
        except ValueError as error:  # also UnicodeDecodeError
            return f"not valid JSON: {error}"
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt"):
                return None
        except SafetensorError as error:
            return f"truncated or not a safetensors file: {error}"
    if path.suffix in (".pt", ".pth", ".bin") and path.name != TRAINING_ARGS_NAME:
        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
            return f"truncated or not a weights-only torch file: {str(error).splitlines()[0].split('. ')[0]}"
    return None


def run_record(args: FinetuneArguments, config) -> dict:
    """What a run records in its checkpoints: the options in `RECORDED_OPTIONS` and the model config."""
    return {
        "options": {name: getattr(args, name) for name in RECORDED_OPTIONS},
        "config": json.loads(config.to_json_string()),
    }


def checkpoint_differences(checkpoint: Path, record: dict, config) -> list[str]:
    """
    How this run's `record` (see `run_record`) differs from the one in `checkpoint`; a checkpoint of an earlier
    version, without a record, is compared by its config.json.
    """
    saved_path = checkpoint / SETTINGS_NAME
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    differences = [
        f"--{name} {value!r} (this run: {record['options'].get(name)!r})"
        for name, value in saved.get("options", {}).items()
        if value != record["options"].get(name)
    ]
    saved_config = saved.get("config")
    if saved_config is None and (checkpoint / CONFIG_NAME).is_file():
        saved_config = json.loads((checkpoint / CONFIG_NAME).read_text())
    if saved_config is not None:
        before, now = type(config).from_dict(saved_config).to_dict(), config.to_dict()
        differences += [
            f"{key} {before.get(key)!r} (this run: {now.get(key)!r})"
            for key in sorted(before.keys() | now.keys())
            if key not in UNCOMPARED_CONFIG_KEYS and before.get(key) != now.get(key)
        ]
    return differences


def check_checkpoint_matches(checkpoint: Path, record: dict, config) -> None:
    """Refuses to resume from a checkpoint written by a run with other settings (its weights would not fit)."""
    differences = checkpoint_differences(checkpoint, record, config)
    if differences:
        raise ValueError(
            f"The checkpoint at {checkpoint} was written by a run with other settings: {'; '.join(differences)}. "
            "Resume with that run's settings, or start a new run."
        )


class RecordSettingsCallback(TrainerCallback):
    """Writes the run's record (see `run_record`) into each checkpoint it saves, as `SETTINGS_NAME`."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            (folder / SETTINGS_NAME).write_text(json.dumps(self.record, indent=2) + "\n")


def finetune(args: FinetuneArguments, training_args: TrainingArguments) -> tuple[Trainer, dict]:
    """
    Fine-tunes, evaluates and saves the best model (Hub-ready, with a card) in `training_args.output_dir`; Trainer's
    checkpoints go to its `checkpoints/` subfolder. Returns `(trainer, results)`.
    """
    check_training_arguments(training_args)
    output_dir = Path(training_args.output_dir)
    resume = resume_checkpoint(training_args.resume_from_checkpoint)
    checkpoint = checkpoint_to_resume(output_dir, resume) if resume is not None else None
    if checkpoint is not None:
        check_checkpoint(checkpoint)
    replaces_earlier_run = prepare_output_dir(output_dir, args.overwrite_output_dir, checkpoint)
    if args.lora_rank is not None:
        check_lora_settings(args)
    dataset = load_any_dataset(args.dataset)
    if args.train_split not in dataset:
        raise ValueError(f"The dataset has no {args.train_split!r} split; it has {list(dataset)}.")
    train, evaluation, test = prepare_splits(dataset, args)
    problem_type, names = label_task(train.features[args.label_column], args.label_column)
    given = {name: dataset[name] for name in (args.train_split, args.eval_split, args.test_split) if name in dataset}
    check_split_labels(given, args.label_column, args.dataset)
    check_disjoint_splits(given, args.audio_column, args.dataset)
    check_classes(train, args.label_column, problem_type, names, args.dataset)
    num_labels = len(names) if names else 1
    id2label = dict(enumerate(names)) if names else {0: args.label_column}
    model = RespM2DForAudioClassification.from_pretrained(
        args.model_name_or_path,
        num_labels=num_labels,
        id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
        problem_type=problem_type,
        pooling=args.pooling,
        classifier_layer=parse_classifier_layer(args.classifier_layer),
        freeze_encoder=args.freeze_encoder,
        ignore_mismatched_sizes=True,
    )
    record = run_record(args, model.config)
    if checkpoint is not None:
        check_checkpoint_matches(checkpoint, record, model.config)
    if args.lora_rank is not None:
        model = add_lora(model, rank=args.lora_rank, alpha=args.lora_alpha)
    feature_extractor = load_feature_extractor(args.model_name_or_path, model.config)
    if training_args.metric_for_best_model == "auto":
        training_args.metric_for_best_model = "mae" if problem_type == "regression" else "auroc"
        training_args.greater_is_better = problem_type != "regression"
    training_args.output_dir = str(output_dir / CHECKPOINTS_DIR)
    optimizers = (None, None)
    if args.layer_decay != 1.0:
        groups = layer_wise_parameter_groups(
            model, training_args.learning_rate, args.layer_decay, training_args.weight_decay
        )
        optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
        optimizers = (optimizer_class(groups, **optimizer_kwargs), None)
    if replaces_earlier_run:  # only now: every check above has passed
        remove_outputs(output_dir, RUN_OUTPUTS)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=AudioClassificationCollator(
            feature_extractor, args.audio_column, args.label_column, problem_type, num_labels, args.downmix
        ),
        compute_metrics=build_compute_metrics(problem_type),
        optimizers=optimizers,
        callbacks=[BreakTiesByLossCallback(), RecordSettingsCallback(record)],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    results = {"validation": strip_prefix(trainer.evaluate(), "eval_")}
    if test is not None:
        results["test"] = strip_prefix(trainer.evaluate(test, metric_key_prefix="test"), "test_")
    save_best_model(trainer, feature_extractor, output_dir, args, results, len(train))
    if not args.keep_checkpoints:
        shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
    return trainer, results


def strip_prefix(metrics, prefix):
    """Keeps the metric values (not runtimes) of a Trainer metrics dict, without the split prefix."""
    skipped = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    return {
        key[len(prefix) :]: value
        for key, value in metrics.items()
        if key.startswith(prefix) and not key.endswith(skipped) and isinstance(value, float) and math.isfinite(value)
    }


def save_best_model(trainer, feature_extractor, output_dir, args, results, train_size):
    """
    Writes the (best) model, its feature extractor, remote code, `results.json` and a model card to `output_dir`.
    A LoRA model is saved merged (it loads like any other) and its adapters, with the head, go to `adapter/`.
    """
    model = trainer.model
    if args.lora_rank:
        save_adapters(model, output_dir / "adapter", args.model_name_or_path)
        model = model.merge_and_unload()
    model.save_pretrained(output_dir)
    feature_extractor.save_pretrained(output_dir)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    card = cards.classifier_card(
        model.config,
        base_model=args.model_name_or_path,
        dataset_name=args.dataset,
        results=results,
        name=output_dir.name,
        training_data=f"{cards.describe_source(args.dataset, cards.dataset_hub_id(args.dataset))}: {train_size} "
        "training recordings." + lora_note(args),
    )
    cards.write_card(output_dir, card)


def save_adapters(model, folder, base_model):
    """
    Saves the LoRA adapters and the head for `PeftModel.from_pretrained(base, folder)`. The base model is recorded by
    its Hub id, or not at all (never a local path); PEFT's placeholder card is dropped (the folder's card covers it).
    """
    model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())  # PEFT fills in the local path when given none, so edit it after
    config["base_model_name_or_path"] = cards.model_hub_id(base_model)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def lora_note(args):
    """How LoRA was used, for the model card (empty without LoRA)."""
    if not args.lora_rank:
        return ""
    return (
        f" LoRA adapters of rank {args.lora_rank} on {', '.join(LORA_TARGET_MODULES)} of every block, merged into the "
        "encoder weights of this folder; the adapters (with the head) are in `adapter/`."
    )


def summary(results, output_dir, args):
    """What the command prints at the end: metrics per split, and what the output folder holds."""
    lines = [
        f"{split}: " + ", ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items()))
        for split, metrics in results.items()
    ]
    lines.append(f"Saved the model, feature extractor, remote code and card in {output_dir}.")
    if args.lora_rank:
        lines.append(f"LoRA: the merged model is in {output_dir}, the adapters and head in {output_dir / 'adapter'}.")
    checkpoints = output_dir / CHECKPOINTS_DIR
    if args.keep_checkpoints:
        lines.append(f"Training checkpoints (with optimizer state) are in {checkpoints}: not needed to use the model.")
    else:
        lines.append(f"Removed the training checkpoints ({checkpoints}); --keep_checkpoints keeps them.")
    return "\n".join(lines)


def build_parser():
    parser_class = type("FinetuneArgumentParser", (OneLineErrorParser, HfArgumentParser), {})
    return parser_class(
        (FinetuneArguments, FinetuneTrainingArguments),
        prog="resp-hf finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv=None):
    """The `resp-hf finetune` command: parses the arguments, fine-tunes and prints a summary."""
    args, training_args = build_parser().parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    output_dir = Path(training_args.output_dir)
    _, results = finetune(args, training_args)
    print(summary(results, output_dir, args))
    return 0


__all__ = [
    "AudioClassificationCollator",
    "BreakTiesByLossCallback",
    "FinetuneArguments",
    "finetune",
    "layer_wise_parameter_groups",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
