"""The OPERA linear-probe benchmark: embed each task once (cached), train linear heads over seeds, write results."""

import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Value, load_from_disk

from ..metrics import classification_metrics, regression_metrics
from ..models.resp_m2d import RespM2DModel
from ..opera import build_task, get_task
from ..opera.dataset import check_root
from ..opera.files import OPERA_VALIDATION_SEED, seeded_split
from ..opera.protocol import ProbeProtocol, get_protocol
from ..output_folders import check_output_folder, remove_outputs, save_npz
from ..quantize import METHODS, quantize
from .embeddings import EmbeddingCache, embed_split, model_fingerprint, parse_layers, split_fingerprint
from .probe import train_linear_probe
from .results import RESULT_FILES, write_results

logger = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
CACHE_FOLDER = "embedding_cache"


@dataclass
class BenchmarkSettings:
    """
    Overrides of the tasks' protocols (`resp-hf opera protocol TASK`), None meaning the protocol's value: the crop of
    clips longer than `seconds` (random start, as the paper's plugin), the head seeds and the epochs. `layers` are
    original M2D layer numbers (see `resp_hf.linear_probe.embeddings.parse_layers`): "last" (-1), "all" or "0,5,-1".
    """

    crop: str = None
    seconds: float = None
    crop_seed: int = 0
    layers: str = "last"
    seeds: tuple = None
    batch_size: int = 16
    epochs: int = None
    allow_missing: bool = False
    overwrite: bool = False
    progress: bool = None
    quantize: str = None  # "int8": embed with resp_hf.quantize(model, "int8") (CPU)

    def check(self):
        """Raises ValueError on settings no run can use: epochs or batch size below 1, no seeds or a repeated seed."""
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}.")
        if self.quantize is not None and self.quantize not in METHODS:
            raise ValueError(f"quantize must be one of {', '.join(METHODS)} or None, got {self.quantize!r}.")

    def applied_to(self, protocol):
        """`protocol` itself, or a copy with these overrides (crop, seconds, seeds, epochs): what a task runs."""
        overrides = {"crop": self.crop, "seconds": self.seconds, "seeds": self.seeds, "epochs": self.epochs}
        overrides = {name: value for name, value in overrides.items() if value is not None}
        return replace(protocol, **overrides) if overrides else protocol


def dataset_protocol(name, metric, has_folds):
    """The protocol of a saved DatasetDict: OPERA's common recipe (64 epochs, batch 32, five seeds, every epoch)."""
    return ProbeProtocol(
        task=name,
        name=name,
        data=f"DatasetDict saved at {name}",
        label_rule="the 'label' column",
        split="the saved splits" + (" (leave-one-subject-out over the 'fold' column)" if has_folds else ""),
        validation="the saved validation split, else 20% of train (seed 1337; 42 per fold)",
        metric=metric,
        monitor="validation MAE, lowest" if metric == "MAE" else "validation AUROC, highest",
        epochs=64,
        batch_size=32,
        validation_fraction=0.2,
        validation_seed=42 if has_folds else OPERA_VALIDATION_SEED,
        spread="folds" if has_folds and metric == "MAE" else "seeds",
        sources={"epochs": "resp_hf default for saved datasets: OPERA's common recipe"},
    )


@dataclass
class TaskSpec:
    """What the runner needs to know about a task (an OPERA task, or a DatasetDict saved on disk)."""

    id: str
    name: str
    metric: str
    label_names: tuple
    protocol: ProbeProtocol

    @property
    def problem_type(self):
        return "regression" if self.metric == "MAE" else "single_label_classification"

    @property
    def num_labels(self):
        return len(self.label_names) or 1


def opera_spec(task_id):
    """An OPERA task with its protocol object, the one `resp-hf opera protocol` prints."""
    task = get_task(task_id)
    metric = "MAE" if task.task_type == "regression" else "AUROC"
    return TaskSpec(task.id, task.name, metric, task.label_names, get_protocol(task.id))


def dataset_spec(path, dataset):
    """A saved DatasetDict: AUROC for a `ClassLabel` label, MAE for a numeric one; OPERA's default epochs and batch."""
    first = next(iter(dataset.values()))
    missing = {"audio", "label"} - set(first.column_names)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; the benchmark needs 'audio' and 'label'.")
    label = first.features["label"]
    if not isinstance(label, ClassLabel) and not (isinstance(label, Value) and label.dtype.startswith("float")):
        raise ValueError(
            f"{path}: the 'label' column is {label}; cast it to ClassLabel(names=[...]) for classification (AUROC) or "
            "to a float for regression (MAE)."
        )
    names = tuple(label.names) if isinstance(label, ClassLabel) else ()
    metric = "AUROC" if names else "MAE"
    name = Path(path).name
    return TaskSpec(name, name, metric, names, dataset_protocol(name, metric, has_folds(dataset)))


def has_folds(dataset):
    """Whether a DatasetDict is leave-one-subject-out: a `train` split with a `fold` column."""
    return "train" in dataset and "fold" in dataset["train"].column_names


def with_validation(spec, dataset):
    """Adds a 20% validation carve-out of train (seed 1337; stratified for classes) when a dataset has none."""
    if "train" not in dataset or "validation" in dataset or has_folds(dataset):
        return dataset
    train = dataset["train"]
    labels = train["label"]
    stratify = isinstance(train.features["label"], ClassLabel)
    fraction, seed = spec.protocol.validation_fraction, spec.protocol.validation_seed
    try:
        kept, held_out = seeded_split(labels, labels if stratify else None, fraction, seed, stratify)
    except ValueError as error:  # too few rows, or a class with a single row
        raise ValueError(
            f"{spec.id}: cannot carve a 20% validation split out of its {train.num_rows} train rows ({error}). "
            "Add recordings or save a validation split."
        ) from error
    dataset = dict(dataset)
    dataset["train"], dataset["validation"] = train.select(kept), train.select(held_out)
    return dataset


def check_splits(spec, dataset):
    """
    Fails clearly, before any training, when a split the protocol needs is missing or empty, or when AUROC would be
    undefined: a train split with a single class, or a validation or test split without every class.
    """
    if has_folds(dataset):
        if spec.metric != "MAE":
            raise ValueError(f"{spec.id}: leave-one-subject-out folds (a 'fold' column) are for regression tasks only.")
        return
    for split in SPLITS:
        if split not in dataset or dataset[split].num_rows == 0:
            raise ValueError(f"{spec.id}: the {split} split is missing or empty (splits: {list(dataset)}).")
    if spec.metric == "AUROC":
        for split in SPLITS:
            check_classes(spec, split, dataset[split])


def check_classes(spec, split, rows):
    """AUROC needs two classes to train on and every class in validation (to pick the epoch) and test."""
    present = set(rows["label"])
    if split == "train" and len(present) < 2:
        names = [spec.label_names[c] for c in sorted(present)]
        raise ValueError(
            f"{spec.id}: the train split has a single class ({', '.join(names)}; {rows.num_rows} rows), so AUROC is "
            "undefined. Add the missing recordings."
        )
    missing = [name for index, name in enumerate(spec.label_names) if index not in present]
    if split != "train" and missing:
        raise ValueError(
            f"{spec.id}: the {split} split lacks the class(es) {', '.join(missing)} ({rows.num_rows} rows), so AUROC "
            "is undefined. Add the missing recordings."
        )


class Embedder:
    """Embeddings of dataset splits for one model, from the on-disk cache when the same model, data and settings ran."""

    def __init__(self, model, settings, cache_dir):
        self.model = model
        self.settings = settings
        self.cache = EmbeddingCache(cache_dir)
        self.model_key = model_fingerprint(model)
        self.num_layers = model.config.num_hidden_layers
        self.layers = [str(layer) for layer in parse_layers(settings.layers, self.num_layers)]

    def is_final(self, layer):
        return int(layer) == self.num_layers - 1

    def __call__(self, split, crop, seconds):
        """`{layer: (rows, size)}` for `split` with clips fitted to `seconds` by `crop` (see `fit_length`)."""
        key = {
            "model": self.model_key,
            "data": split_fingerprint(split),
            "layers": self.layers,
            "crop": crop,
            "seconds": seconds,
            "crop_seed": self.settings.crop_seed,
            "protocol": 2,  # 2: original layer numbers, EVAR's random-crop start
        }
        if self.settings.quantize:
            key["quantize"] = self.settings.quantize
        cached = self.cache.load(key, self.layers, split.num_rows)
        if cached is None:
            settings = self.settings
            cached = embed_split(
                self.model,
                split,
                [int(layer) for layer in self.layers],
                crop,
                seconds,
                settings.crop_seed,
                settings.batch_size,
                settings.progress,
            )
            self.cache.save(key, cached)
        return cached


def score_on_test(spec, logits, labels):
    """The test metric as `{"value": AUROC}`, or `{"value": MAE, "mape": MAPE}` for regression."""
    if spec.metric == "MAE":
        metrics = regression_metrics(logits[:, 0], labels)
        return {"value": metrics["mae"], "mape": metrics["mape"]}
    return {"value": classification_metrics(logits, labels, spec.problem_type)["auroc"]}


def evaluate_splits(spec, protocol, dataset, embedder, predictions_dir):
    """Train/validation/test splits: per layer and seed, the head of the best validation epoch, scored on test."""
    embeddings = {split: embedder(dataset[split], protocol.crop, protocol.seconds) for split in SPLITS}
    labels = {split: np.asarray(dataset[split]["label"]) for split in SPLITS}
    paths = np.asarray(dataset["test"]["path"] if "path" in dataset["test"].column_names else [])
    records = []
    for layer in embedder.layers:
        for seed in protocol.seeds:
            logits, best_epoch, _ = train_linear_probe(
                *[(embeddings[split][layer], labels[split]) for split in SPLITS],
                problem_type=spec.problem_type,
                num_labels=spec.num_labels,
                seed=seed,
                protocol=protocol,
            )
            path = prediction_path(predictions_dir, spec, layer, seed)
            save_npz(path, logits=logits, labels=labels["test"], paths=paths)
            scores = score_on_test(spec, logits, labels["test"])
            records.append(record(spec, layer, embedder.is_final(layer), seed, scores, best_epoch, dataset))
    return records


def evaluate_folds(spec, protocol, dataset, embedder, predictions_dir):
    """
    Leave-one-subject-out: each fold trains on the other rows (the protocol's validation fraction and seed, random)
    and tests on its rows; a seed's MAE and MAPE are the means over folds and, as OPERA reports, its ± the standard
    deviation over folds. Rows in no fold only train; their saved prediction is NaN.
    """
    rows = dataset["train"]
    embeddings = embedder(rows, protocol.crop, protocol.seconds)
    labels = np.asarray(rows["label"], dtype=np.float32)
    folds = np.asarray([str(f) if f is not None else "" for f in rows["fold"]])
    records = []
    for layer in embedder.layers:
        for seed in protocol.seeds:
            maes, mapes, predictions = [], [], np.full_like(labels, np.nan)
            for fold in sorted(set(folds) - {""}, key=lambda f: (len(f), f)):
                test = np.flatnonzero(folds == fold)
                rest = np.flatnonzero(folds != fold)
                kept, held_out = seeded_split(
                    rest, None, protocol.validation_fraction, protocol.validation_seed, stratify=False
                )
                train, validation = rest[kept], rest[held_out]
                logits, _, _ = train_linear_probe(
                    *[(embeddings[layer][idx], labels[idx]) for idx in (train, validation, test)],
                    problem_type="regression",
                    num_labels=1,
                    seed=seed,
                    protocol=protocol,
                )
                predictions[test] = logits[:, 0]
                scores = score_on_test(spec, logits, labels[test])
                maes.append(scores["value"])
                mapes.append(scores["mape"])
            save_npz(
                prediction_path(predictions_dir, spec, layer, seed),
                predictions=predictions,
                labels=labels,
                folds=folds,
                fold_mae=np.asarray(maes),
                fold_mape=np.asarray(mapes),
            )
            scores = {"value": np.mean(maes), "mape": np.mean(mapes), "fold_std": np.std(maes)}
            records.append(record(spec, layer, embedder.is_final(layer), seed, scores, None, dataset))
    return records


def prediction_path(predictions_dir, spec, layer, seed):
    return predictions_dir / f"{spec.id}_layer-{layer}_seed-{seed}.npz"


def record(spec, layer, final_layer, seed, scores, best_epoch, dataset):
    """
    One run's record (see `resp_hf.linear_probe.results`): `scores` holds `value` and, for regression, `mape` (and
    `fold_std` for leave-one-subject-out). `layer` is the original M2D layer number; `final_layer` marks L-1.
    """
    sizes = {split: dataset[split].num_rows if split in dataset else 0 for split in SPLITS}
    return {
        "task": spec.id,
        "task_name": spec.name,
        "metric": spec.metric,
        "layer": layer,
        "final_layer": final_layer,
        "seed": seed,
        **{name: float(score) for name, score in scores.items()},
        "best_epoch": best_epoch,
        "n_train": sizes["train"],
        "n_validation": sizes["validation"],
        "n_test": sizes["test"],
    }


def load_model(model_name_or_path, device=None):
    """The encoder of a converted (or fine-tuned) folder or Hub repo, in eval mode on `device` (GPU when present)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RespM2DModel.from_pretrained(model_name_or_path).eval().to(device)


def build_opera_task(task_id, opera_root, allow_missing):
    """An OPERA task's DatasetDict, and a note (also logged) on the recordings `allow_missing` left out, or None."""
    dataset, report = build_task(task_id, opera_root, allow_missing=allow_missing, return_report=True)
    note = report.left_out_note()
    if note:
        logger.warning(note)
    return dataset, note


def benchmark_jobs(tasks, opera_root, datasets, allow_missing):
    """
    `(spec, load)` per task, where `load()` returns `(dataset, note)`. Task ids, the OPERA root and the saved datasets
    are checked here, before a model is loaded.
    """
    if tasks and opera_root is None:
        raise ValueError("OPERA tasks need --opera-root (the OPERA checkout with the datasets).")
    jobs = [(opera_spec(task), partial(build_opera_task, task, opera_root, allow_missing)) for task in tasks]
    if tasks:
        check_root(opera_root)
    for path in datasets:
        dataset = load_from_disk(str(path))
        jobs.append((dataset_spec(path, dataset), lambda dataset=dataset: (dataset, None)))
    return jobs


def run_benchmark(
    model, output_dir, tasks=(), opera_root=None, datasets=(), settings=None, model_name=None, cache_dir=None
):
    """
    Evaluates `model` (a `RespM2DModel` or a path / repo id) on OPERA tasks built from `opera_root` and on DatasetDicts
    saved on disk, and writes `results.csv`, `results.md`, `results.json`, per-task plots and the test predictions to
    `output_dir`. Embeddings are cached in `cache_dir` (default `output_dir/embedding_cache`). Returns the records.
    """
    settings = settings or BenchmarkSettings()
    settings.check()
    output_dir = Path(output_dir)
    # Results of two runs must not mix; the embedding cache alone is reused (each entry is keyed by model, data and
    # settings, and verified on load).
    check_output_folder(output_dir, settings.overwrite, option="--overwrite (overwrite=True)", may_hold=(CACHE_FOLDER,))
    jobs = benchmark_jobs(tasks, opera_root, datasets, settings.allow_missing)
    if isinstance(model, (str, Path)):
        model_name = model_name or Path(model).name
        model = load_model(model)
    embedder = Embedder(model, settings, cache_dir or output_dir / CACHE_FOLDER)
    if settings.quantize:  # the cache key holds the float32 weights' fingerprint and the quantization method
        embedder.model = quantize(model.to("cpu"), settings.quantize)  # int8 kernels are CPU-only
        model_name = f"{model_name or 'model'} ({settings.quantize})"
    checked, notes = [], []
    for spec, load in jobs:  # every task is built and checked before anything is embedded
        dataset, note = load()
        notes += [note] if note else []
        dataset = with_validation(spec, dataset)
        check_splits(spec, dataset)
        protocol = settings.applied_to(spec.protocol)
        protocol.check_epochs(protocol.epochs)
        checked.append((spec, protocol, dataset))
    remove_outputs(output_dir, (*RESULT_FILES, "plots", "predictions"))  # only --overwrite gets here with them
    predictions_dir = output_dir / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for spec, protocol, dataset in checked:
        evaluate = evaluate_folds if has_folds(dataset) else evaluate_splits
        logger.info("Evaluating %s (%s)", spec.id, spec.name)
        records += evaluate(spec, protocol, dataset, embedder, predictions_dir)
    write_results(records, output_dir, model_name or "model", notes=notes)
    return records


