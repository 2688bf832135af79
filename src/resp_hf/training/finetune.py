"""Fine-tune an M2D encoder (or classifier) on any audio dataset with the Hugging Face Trainer.

    resp-hf finetune --model_name_or_path ./resp-m2d --dataset ./my_recordings --output_dir ./resp-m2d-copd

`--dataset` is a folder of labelled recordings (`<class>/<files>`, optionally under train/validation/test), a
DatasetDict saved with `save_to_disk`, or a Hub dataset name. Every `TrainingArguments` option can be passed too
(`--learning_rate`, `--num_train_epochs`, `--per_device_train_batch_size`, `--bf16`, ...).
"""

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Audio, ClassLabel, Sequence, Value
from transformers import HfArgumentParser, Trainer, TrainingArguments

from .. import cards
from ..audio import decode_audio
from ..data import load_any_dataset
from ..evaluate import build_compute_metrics
from ..models.resp_m2d import RespM2DFeatureExtractor, RespM2DForAudioClassification
from ..models.resp_m2d.configuration_resp_m2d import POOLING_MODES


@dataclass
class FinetuneArguments:
    """What to fine-tune on what; training hyper-parameters come from `TrainingArguments`."""

    model_name_or_path: str = field(metadata={"help": "converted encoder or classifier folder, or a Hub repo id"})
    dataset: str = field(metadata={"help": "audio folder, save_to_disk folder, or Hub dataset name"})
    audio_column: str = field(default="audio", metadata={"help": "column with file paths or audio dicts"})
    label_column: str = field(default="label", metadata={"help": "ClassLabel, Sequence(ClassLabel) or float column"})
    train_split: str = field(default="train")
    eval_split: str = field(default="validation", metadata={"help": "carved out of train when the dataset lacks it"})
    test_split: str = field(default="test", metadata={"help": "evaluated at the end when present"})
    validation_fraction: float = field(
        default=0.2, metadata={"help": "share of train held out when there is no eval split"}
    )
    pooling: str = field(default="frequency", metadata={"help": "embedding the head reads", "choices": POOLING_MODES})
    classifier_layer: str = field(default=None, metadata={"help": "None (final output), a layer index, or 'weighted'"})
    freeze_encoder: bool = field(default=False, metadata={"help": "train only the head (linear probing)"})
    layer_decay: float = field(default=1.0, metadata={"help": "layer-wise learning-rate decay (1.0: none)"})
    downmix: bool = field(default=False, metadata={"help": "average the channels of multichannel recordings"})


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
        audio = [decode_audio(row[self.audio_column], rate, downmix=self.downmix) for row in rows]
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


def prepare_splits(dataset, args):
    """Train/eval(/test) splits; the eval split is a seeded, stratified carve-out of train when absent."""
    for column in (args.audio_column, args.label_column):
        if column not in dataset[args.train_split].column_names:
            raise ValueError(f"Column {column!r} not in the dataset: {dataset[args.train_split].column_names}.")
    if isinstance(dataset[args.train_split].features[args.audio_column], Audio):
        dataset = dataset.cast_column(args.audio_column, Audio(decode=False))  # decoded by the collator instead
    train = dataset[args.train_split]
    if args.eval_split in dataset:
        evaluation = dataset[args.eval_split]
    else:
        stratify = args.label_column if isinstance(train.features[args.label_column], ClassLabel) else None
        held_out = train.train_test_split(test_size=args.validation_fraction, seed=42, stratify_by_column=stratify)
        train, evaluation = held_out["train"], held_out["test"]
    return train, evaluation, dataset.get(args.test_split)


def parse_classifier_layer(value):
    """`--classifier_layer`: None (the final output), "weighted", or a layer index."""
    if value in (None, "None", "none"):
        return None
    if value == "weighted":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--classifier_layer must be None, 'weighted' or a layer index, got {value!r}.") from None


def finetune(args, training_args):
    """Fine-tunes, evaluates and saves the best model (Hub-ready, with a card). Returns `(trainer, results)`."""
    dataset = load_any_dataset(args.dataset)
    if args.train_split not in dataset:
        raise ValueError(f"The dataset has no {args.train_split!r} split; it has {list(dataset)}.")
    train, evaluation, test = prepare_splits(dataset, args)
    problem_type, names = label_task(train.features[args.label_column], args.label_column)
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
    feature_extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    if training_args.metric_for_best_model == "auto":
        training_args.metric_for_best_model = "mae" if problem_type == "regression" else "auroc"
        training_args.greater_is_better = problem_type != "regression"
    optimizers = (None, None)
    if args.layer_decay != 1.0:
        groups = layer_wise_parameter_groups(
            model, training_args.learning_rate, args.layer_decay, training_args.weight_decay
        )
        optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
        optimizers = (optimizer_class(groups, **optimizer_kwargs), None)
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
    )
    trainer.train()
    results = {"validation": strip_prefix(trainer.evaluate(), "eval_")}
    if test is not None:
        results["test"] = strip_prefix(trainer.evaluate(test, metric_key_prefix="test"), "test_")
        trainer.save_metrics("test", {f"test_{k}": v for k, v in results["test"].items()})
    save_best_model(trainer, feature_extractor, args, results, len(train))
    return trainer, results


def strip_prefix(metrics, prefix):
    """Keeps the metric values (not runtimes) of a Trainer metrics dict, without the split prefix."""
    skipped = ("runtime", "samples_per_second", "steps_per_second", "epoch")
    return {
        key[len(prefix) :]: value
        for key, value in metrics.items()
        if key.startswith(prefix) and not key.endswith(skipped) and isinstance(value, float) and math.isfinite(value)
    }


def save_best_model(trainer, feature_extractor, args, results, train_size):
    """Writes the (best) model, its feature extractor and a model card to `output_dir`."""
    output_dir = Path(trainer.args.output_dir)
    trainer.save_model(output_dir)
    feature_extractor.save_pretrained(output_dir)
    card = cards.classifier_card(
        trainer.model.config,
        base_model=args.model_name_or_path,
        dataset_name=args.dataset,
        results=results,
        name=output_dir.name,
        training_data=f"`{args.dataset}`: {train_size} training recordings.",
    )
    cards.write_card(output_dir, card)


def build_parser():
    return HfArgumentParser(
        (FinetuneArguments, FinetuneTrainingArguments),
        prog="resp-hf finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv=None):
    args, training_args = build_parser().parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    _, results = finetune(args, training_args)
    for split, metrics in results.items():
        print(f"{split}: " + ", ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items())))
    return 0


__all__ = ["AudioClassificationCollator", "FinetuneArguments", "finetune", "layer_wise_parameter_groups", "main"]

if __name__ == "__main__":
    sys.exit(main())
