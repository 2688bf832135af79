"""The OPERA linear-probe benchmark: embed each task once (cached), train linear heads over seeds, write results."""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, load_from_disk

from ..evaluate import classification_metrics, regression_metrics
from ..models.resp_m2d import RespM2DModel
from ..opera import build_task, get_task
from ..opera.common import OPERA_VALIDATION_SEED, seeded_split
from .embeddings import EmbeddingCache, embed_split, layer_names, model_fingerprint, split_fingerprint
from .probe import train_linear_probe
from .results import write_results

logger = logging.getLogger(__name__)
LOSO_VALIDATION_SEED = 42


@dataclass
class BenchmarkSettings:
    """The protocol: 10-s windows (zero-padded or cropped), seeds 0-4, the last layer unless `layers="all"`."""

    crop: str = "center"
    seconds: float = 10.0
    crop_seed: int = 0
    layers: str = "last"
    seeds: tuple = (0, 1, 2, 3, 4)
    batch_size: int = 16
    epochs: int = None  # default: the task's (64; KAUH 50)
    allow_missing: bool = False
    progress: bool = None

    def embedding_key(self):
        return {"crop": self.crop, "seconds": self.seconds, "crop_seed": self.crop_seed, "protocol": 1}


@dataclass
class TaskSpec:
    """What the runner needs to know about a task (an OPERA task, or a DatasetDict saved on disk)."""

    id: str
    name: str
    metric: str
    label_names: tuple
    epochs: int = 64
    batch_size: int = 32

    @property
    def problem_type(self):
        return "regression" if self.metric == "MAE" else "single_label_classification"


def opera_spec(task_id):
    task = get_task(task_id)
    metric = "MAE" if task.task_type == "regression" else "AUROC"
    return TaskSpec(task.id, task.name, metric, task.label_names, task.epochs, task.batch_size)


def dataset_spec(path, dataset):
    """A saved DatasetDict: AUROC for a `ClassLabel` label, MAE for a numeric one; OPERA's default epochs and batch."""
    first = next(iter(dataset.values()))
    missing = {"audio", "label"} - set(first.column_names)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; the benchmark needs 'audio' and 'label'.")
    label = first.features["label"]
    names = tuple(label.names) if isinstance(label, ClassLabel) else ()
    return TaskSpec(Path(path).name, Path(path).name, "AUROC" if names else "MAE", names)


def with_validation(dataset):
    """Adds a stratified 20% validation carve-out of train (seed 1337) when a classification dataset has none."""
    if "train" not in dataset or "validation" in dataset or "fold" in dataset["train"].column_names:
        return dataset
    train = dataset["train"]
    labels = train["label"]
    stratify = isinstance(train.features["label"], ClassLabel)
    kept, held_out = seeded_split(labels, labels if stratify else None, 0.2, OPERA_VALIDATION_SEED, stratify)
    dataset = dict(dataset)
    dataset["train"], dataset["validation"] = train.select(kept), train.select(held_out)
    return dataset


def check_splits(spec, dataset):
    """Fails clearly when a split the protocol needs is missing, or a classification split has a single class."""
    if "train" in dataset and "fold" in dataset["train"].column_names:
        return
    for split in ("train", "validation", "test"):
        if split not in dataset or dataset[split].num_rows == 0:
            raise ValueError(f"{spec.id}: the {split} split is missing or empty (splits: {list(dataset)}).")
        if spec.metric == "AUROC":
            classes = sorted(set(dataset[split]["label"]))
            if len(classes) < 2:
                names = [spec.label_names[c] for c in classes]
                raise ValueError(
                    f"{spec.id}: the {split} split has a single class ({', '.join(names)}; "
                    f"{dataset[split].num_rows} rows), so AUROC is undefined. Add the missing recordings."
                )


class Embedder:
    """Embeddings of dataset splits for one model, from the on-disk cache when the same model, data and settings ran."""

    def __init__(self, model, settings, cache_dir):
        self.model = model
        self.settings = settings
        self.cache = EmbeddingCache(cache_dir)
        self.model_key = model_fingerprint(model)
        self.layers = layer_names(model, settings.layers)

    def __call__(self, split):
        key = {
            "model": self.model_key,
            "data": split_fingerprint(split),
            "layers": self.layers,
            **self.settings.embedding_key(),
        }
        cached = self.cache.load(key)
        if cached is None:
            settings = self.settings
            cached = embed_split(
                self.model,
                split,
                self.layers,
                settings.crop,
                settings.seconds,
                settings.crop_seed,
                settings.batch_size,
                settings.progress,
            )
            self.cache.save(key, cached)
        return cached


def evaluate_classification(spec, dataset, embedder, settings, predictions_dir):
    embeddings = {split: embedder(dataset[split]) for split in ("train", "validation", "test")}
    labels = {split: np.asarray(dataset[split]["label"]) for split in embeddings}
    records = []
    for layer in embedder.layers:
        for seed in settings.seeds:
            logits, best_epoch, _ = train_linear_probe(
                *[(embeddings[split][layer], labels[split]) for split in ("train", "validation", "test")],
                problem_type=spec.problem_type,
                num_labels=len(spec.label_names),
                seed=seed,
                epochs=settings.epochs or spec.epochs,
                batch_size=spec.batch_size,
            )
            value = classification_metrics(logits, labels["test"], spec.problem_type)["auroc"]
            np.savez(
                predictions_dir / f"{spec.id}_layer-{layer}_seed-{seed}.npz",
                logits=logits,
                labels=labels["test"],
                paths=np.asarray(dataset["test"]["path"] if "path" in dataset["test"].column_names else []),
            )
            records.append(record(spec, layer, seed, value, best_epoch, dataset))
    return records


def evaluate_regression(spec, dataset, embedder, settings, predictions_dir):
    """Leave-one-subject-out: each fold trains on the other rows (20% of them validation) and tests on its rows."""
    rows = dataset["train"]
    embeddings = embedder(rows)
    labels = np.asarray(rows["label"], dtype=np.float32)
    folds = np.asarray([str(f) if f is not None else "" for f in rows["fold"]])
    records = []
    for layer in embedder.layers:
        for seed in settings.seeds:
            maes, mapes, predictions = [], [], np.zeros_like(labels)
            for fold in sorted(set(folds) - {""}, key=lambda f: (len(f), f)):
                test = np.flatnonzero(folds == fold)
                rest = np.flatnonzero(folds != fold)
                kept, held_out = seeded_split(rest, None, 0.2, LOSO_VALIDATION_SEED, stratify=False)
                train, validation = rest[kept], rest[held_out]
                logits, _, _ = train_linear_probe(
                    *[(embeddings[layer][idx], labels[idx]) for idx in (train, validation, test)],
                    problem_type="regression",
                    num_labels=1,
                    seed=seed,
                    epochs=settings.epochs or spec.epochs,
                    batch_size=spec.batch_size,
                )
                predictions[test] = logits[:, 0]
                metrics = regression_metrics(logits[:, 0], labels[test])
                maes.append(metrics["mae"])
                mapes.append(metrics["mape"])
            np.savez(
                predictions_dir / f"{spec.id}_layer-{layer}_seed-{seed}.npz",
                predictions=predictions,
                labels=labels,
                folds=folds,
                fold_mae=np.asarray(maes),
                fold_mape=np.asarray(mapes),
            )
            result = record(spec, layer, seed, float(np.mean(maes)), None, dataset)
            records.append({**result, "mape": float(np.mean(mapes))})
    return records


def record(spec, layer, seed, value, best_epoch, dataset):
    sizes = {split: dataset[split].num_rows if split in dataset else 0 for split in ("train", "validation", "test")}
    return {
        "task": spec.id,
        "task_name": spec.name,
        "metric": spec.metric,
        "layer": layer,
        "seed": seed,
        "value": float(value),
        "best_epoch": best_epoch,
        "n_train": sizes["train"],
        "n_validation": sizes["validation"],
        "n_test": sizes["test"],
    }


def load_model(model_name_or_path, device=None):
    """The encoder of a converted (or fine-tuned) folder or Hub repo, in eval mode on `device` (GPU when present)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RespM2DModel.from_pretrained(model_name_or_path).eval().to(device)


def run_benchmark(
    model, output_dir, tasks=(), opera_root=None, datasets=(), settings=None, model_name=None, cache_dir=None
):
    """
    Evaluates `model` (a `RespM2DModel` or a path / repo id) on OPERA tasks built from `opera_root` and on DatasetDicts
    saved on disk, and writes `results.csv`, `results.md`, `results.json`, per-task plots and the test predictions to
    `output_dir`. Embeddings are cached in `cache_dir` (default `output_dir/embedding_cache`). Returns the records.
    """
    settings = settings or BenchmarkSettings()
    if isinstance(model, (str, Path)):
        model_name = model_name or Path(model).name
        model = load_model(model)
    output_dir = Path(output_dir)
    predictions_dir = output_dir / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    if tasks and opera_root is None:
        raise ValueError("OPERA tasks need --opera-root (the OPERA checkout with the datasets).")
    embedder = Embedder(model, settings, cache_dir or output_dir / "embedding_cache")
    jobs = [(opera_spec(t), lambda t=t: build_task(t, opera_root, allow_missing=settings.allow_missing)) for t in tasks]
    for path in datasets:
        dataset = load_from_disk(str(path))
        jobs.append((dataset_spec(path, dataset), lambda dataset=dataset: dataset))
    records = []
    for spec, load in jobs:
        dataset = with_validation(load())
        check_splits(spec, dataset)
        evaluate = evaluate_regression if spec.metric == "MAE" else evaluate_classification
        logger.info("Evaluating %s (%s)", spec.id, spec.name)
        records += evaluate(spec, dataset, embedder, settings, predictions_dir)
    write_results(records, output_dir, model_name or "model")
    return records
