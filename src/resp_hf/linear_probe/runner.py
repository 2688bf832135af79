"""The OPERA linear-probe benchmark: embed each task once (cached), train linear heads over seeds, write results."""

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_from_disk

from ..audio import check_window_seconds
from ..metrics import classification_metrics, regression_metrics
from ..models.resp_m2d import RespM2DModel
from ..opera import OPERA_VALIDATION_SEED, OperaTask, ProbeProtocol, build_task, check_root, get_protocol, get_task
from ..output_folders import check_output_folder, check_outside_inputs, remove_outputs, save_npz
from ..quantize import METHODS, quantize
from ..splits import check_disjoint_splits, check_split_labels, seeded_split
from .embeddings import EmbeddingCache, embed_split, model_fingerprint, parse_layers, split_fingerprint
from .probe import EmbeddedSplit, ProbeData, train_linear_probe
from .results import RESULT_FILES, write_results

logger = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
CACHE_FOLDER = "embedding_cache"
# A saved DatasetDict without a validation split gets OPERA's carve-out: 20% of train with OPERA's seed 1337
# (stratified for classes), or 20% of each leave-one-subject-out fold's training rows with seed 42 (NoseMic's).
SAVED_VALIDATION_FRACTION = 0.2
SAVED_VALIDATION_SEED = OPERA_VALIDATION_SEED
SAVED_FOLD_VALIDATION_SEED = 42


@dataclass
class BenchmarkSettings:
    """
    Overrides of the tasks' protocols (`resp-hf opera protocol TASK`), None meaning the protocol's value: the crop of
    clips longer than `seconds` (random start, as the paper's plugin), the head seeds and the epochs. `layers` are
    original M2D layer numbers (see `resp_hf.linear_probe.embeddings.parse_layers`): "last" (-1), "all" or "0,5,-1".
    """

    crop: str | None = None
    seconds: float | None = None
    crop_seed: int = 0
    layers: str = "last"
    seeds: tuple[int, ...] | None = None
    batch_size: int = 16
    epochs: int | None = None
    allow_missing: bool = False
    overwrite: bool = False
    progress: bool | None = None
    quantize: str | None = None  # "int8", "fp32" (CPU) or "bf16": embed with resp_hf.quantize(model, quantize)

    def check(self) -> None:
        """
        Raises ValueError on settings no run can use: epochs or batch size below 1, no seeds or a repeated seed, a
        clip length that is not a positive finite number of seconds up to an hour.
        """
        if self.seconds is not None:
            check_window_seconds(self.seconds)
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}.")
        if self.quantize is not None and self.quantize not in METHODS:
            raise ValueError(f"quantize must be one of {', '.join(METHODS)} or None, got {self.quantize!r}.")

    def applied_to(self, protocol: ProbeProtocol) -> ProbeProtocol:
        """`protocol` itself, or a copy with these overrides (crop, seconds, seeds, epochs): what a task runs."""
        overrides = {"crop": self.crop, "seconds": self.seconds, "seeds": self.seeds, "epochs": self.epochs}
        overrides = {name: value for name, value in overrides.items() if value is not None}
        return replace(protocol, **overrides) if overrides else protocol


class Job(NamedTuple):
    """A task to run: its description, its protocol, and `load()`, which builds it as `(dataset, note or None)`."""

    task: OperaTask
    protocol: ProbeProtocol
    load: Callable[[], tuple[DatasetDict, str | None]]


@dataclass(frozen=True)
class TaskRun:
    """A built task ready to evaluate: its description, the protocol it runs (with the overrides) and its splits."""

    task: OperaTask
    protocol: ProbeProtocol
    dataset: DatasetDict


def saved_dataset_task(path: str | Path, dataset: DatasetDict) -> OperaTask:
    """
    A saved DatasetDict as a task: AUROC for a `ClassLabel` label, MAE for a float one. It needs `audio` and `label`
    columns; a `fold` column in `train` makes it leave-one-subject-out.
    """
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
    name = Path(path).name
    folds = " (leave-one-subject-out over the 'fold' column)" if has_folds(dataset) else ""
    return OperaTask(
        id=name,
        name=name,
        dataset=f"DatasetDict saved at {name}",
        modality="",
        target="the 'label' column",
        task_type=("binary" if len(names) == 2 else "multiclass") if names else "regression",
        label_names=names,
        metric="AUROC" if names else "MAE",
        split_protocol=f"the saved splits{folds}",
        validation=f"the saved validation split, else {SAVED_VALIDATION_FRACTION:.0%} of train (seed "
        f"{SAVED_VALIDATION_SEED}; {SAVED_FOLD_VALIDATION_SEED} per fold)",
    )


def saved_dataset_protocol(task: OperaTask, folds: bool) -> ProbeProtocol:
    """The protocol of a saved DatasetDict: OPERA's common recipe (64 epochs, batch 32, five seeds, every epoch)."""
    return ProbeProtocol(
        task=task.id,
        name=task.name,
        data=task.dataset,
        label_rule=task.target,
        split=task.split_protocol,
        validation=task.validation,
        metric=task.metric,
        monitor="validation MAE, lowest" if task.problem_type == "regression" else "validation AUROC, highest",
        epochs=64,
        batch_size=32,
        validation_fraction=SAVED_VALIDATION_FRACTION,
        validation_seed=SAVED_FOLD_VALIDATION_SEED if folds else SAVED_VALIDATION_SEED,
        spread="folds" if folds and task.problem_type == "regression" else "seeds",
        sources={"epochs": "resp_hf default for saved datasets: OPERA's common recipe"},
    )


def has_folds(dataset: DatasetDict) -> bool:
    """Whether a DatasetDict is leave-one-subject-out: a `train` split with a `fold` column."""
    return "train" in dataset and "fold" in dataset["train"].column_names


def with_validation(task: OperaTask, protocol: ProbeProtocol, dataset: DatasetDict) -> DatasetDict:
    """Adds the protocol's validation carve-out of train (stratified for classes) when a dataset has none."""
    if "train" not in dataset or "validation" in dataset or has_folds(dataset):
        return dataset
    train = dataset["train"]
    labels = list(train["label"])
    stratify = labels if isinstance(train.features["label"], ClassLabel) else None
    fraction = protocol.validation_fraction
    try:
        kept, held_out = seeded_split(len(labels), fraction, protocol.validation_seed, stratify=stratify)
    except ValueError as error:  # too few rows, or a class with a single row
        raise ValueError(
            f"{task.id}: cannot carve a {fraction:.0%} validation split out of its {train.num_rows} train rows: "
            f"{error} Add recordings or save a validation split."
        ) from error
    dataset = dict(dataset)
    dataset["train"], dataset["validation"] = train.select(kept), train.select(held_out)
    return dataset


def check_splits(task: OperaTask, dataset: DatasetDict) -> None:
    """
    Fails clearly, before any training, when a split the protocol needs is missing or empty, or when AUROC would be
    undefined: a train split with a single class, or a validation or test split without every class.
    """
    if has_folds(dataset):
        if task.problem_type != "regression":
            raise ValueError(f"{task.id}: leave-one-subject-out folds (a 'fold' column) are for regression tasks only.")
        return
    for split in SPLITS:
        if split not in dataset or dataset[split].num_rows == 0:
            raise ValueError(f"{task.id}: the {split} split is missing or empty (splits: {list(dataset)}).")
    if task.problem_type != "regression":
        for split in SPLITS:
            check_classes(task, split, dataset[split])


def check_classes(task: OperaTask, split: str, rows: Dataset) -> None:
    """AUROC needs two classes to train on and every class in validation (to pick the epoch) and test."""
    present = set(rows["label"])
    if split == "train" and len(present) < 2:
        names = [task.label_names[c] for c in sorted(present)]
        raise ValueError(
            f"{task.id}: the train split has a single class ({', '.join(names)}; {rows.num_rows} rows), so AUROC is "
            "undefined. Add the missing recordings."
        )
    missing = [name for index, name in enumerate(task.label_names) if index not in present]
    if split != "train" and missing:
        raise ValueError(
            f"{task.id}: the {split} split lacks the class(es) {', '.join(missing)} ({rows.num_rows} rows), so AUROC "
            "is undefined. Add the missing recordings."
        )


class Embedder:
    """Embeddings of dataset splits for one model, from the on-disk cache when the same model, data and settings ran."""

    def __init__(self, model: RespM2DModel, settings: BenchmarkSettings, cache_dir: str | Path):
        self.model = model
        self.settings = settings
        self.cache = EmbeddingCache(cache_dir)
        self.model_key = model_fingerprint(model)
        self.num_layers = model.config.num_hidden_layers
        self.layers = [str(layer) for layer in parse_layers(settings.layers, self.num_layers)]

    def is_final(self, layer: str) -> bool:
        return int(layer) == self.num_layers - 1

    def __call__(self, split: Dataset, crop: str, seconds: float) -> dict[str, np.ndarray]:
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


def score_on_test(task: OperaTask, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The test metric as `{"value": AUROC}`, or `{"value": MAE, "mape": MAPE}` for regression."""
    if task.problem_type == "regression":
        metrics = regression_metrics(logits[:, 0], labels)
        return {"value": metrics["mae"], "mape": metrics["mape"]}
    return {"value": classification_metrics(logits, labels, task.problem_type)["auroc"]}


def evaluate_splits(run: TaskRun, embedder: Embedder, predictions_dir: Path) -> list[dict]:
    """Train/validation/test splits: per layer and seed, the head of the best validation epoch, scored on test."""
    task, protocol, dataset = run.task, run.protocol, run.dataset
    embeddings = {split: embedder(dataset[split], protocol.crop, protocol.seconds) for split in SPLITS}
    labels = {split: np.asarray(dataset[split]["label"]) for split in SPLITS}
    paths = np.asarray(dataset["test"]["path"] if "path" in dataset["test"].column_names else [])
    records = []
    for layer in embedder.layers:
        data = ProbeData(
            *[EmbeddedSplit(embeddings[split][layer], labels[split]) for split in SPLITS],
            problem_type=task.problem_type,
            num_labels=task.num_labels,
        )
        for seed in protocol.seeds:
            result = train_linear_probe(data, protocol, seed)
            path = prediction_path(predictions_dir, task, layer, seed)
            save_npz(path, logits=result.test_logits, labels=labels["test"], paths=paths)
            scores = score_on_test(task, result.test_logits, labels["test"])
            final = embedder.is_final(layer)
            records.append(
                record(run, layer=layer, final_layer=final, seed=seed, scores=scores, best_epoch=result.best_epoch)
            )
    return records


def evaluate_folds(run: TaskRun, embedder: Embedder, predictions_dir: Path) -> list[dict]:
    """
    Leave-one-subject-out: each fold trains on the other rows (the protocol's validation fraction and seed, random)
    and tests on its rows; a seed's MAE and MAPE are the means over folds and, as OPERA reports, its ± the standard
    deviation over folds. Rows in no fold only train; their saved prediction is NaN.
    """
    task, protocol, rows = run.task, run.protocol, run.dataset["train"]
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
                kept, held_out = seeded_split(len(rest), protocol.validation_fraction, protocol.validation_seed)
                data = ProbeData(
                    *[
                        EmbeddedSplit(embeddings[layer][part], labels[part])
                        for part in (rest[kept], rest[held_out], test)
                    ],
                    problem_type="regression",
                    num_labels=1,
                )
                logits = train_linear_probe(data, protocol, seed).test_logits
                predictions[test] = logits[:, 0]
                scores = score_on_test(task, logits, labels[test])
                maes.append(scores["value"])
                mapes.append(scores["mape"])
            save_npz(
                prediction_path(predictions_dir, task, layer, seed),
                predictions=predictions,
                labels=labels,
                folds=folds,
                fold_mae=np.asarray(maes),
                fold_mape=np.asarray(mapes),
            )
            scores = {"value": np.mean(maes), "mape": np.mean(mapes), "fold_std": np.std(maes)}
            final = embedder.is_final(layer)
            records.append(record(run, layer=layer, final_layer=final, seed=seed, scores=scores, best_epoch=None))
    return records


def prediction_path(predictions_dir: Path, task: OperaTask, layer: str, seed: int) -> Path:
    return predictions_dir / f"{task.id}_layer-{layer}_seed-{seed}.npz"


def record(run: TaskRun, *, layer: str, final_layer: bool, seed: int, scores: dict, best_epoch: int | None) -> dict:
    """
    One run's record (see `resp_hf.linear_probe.results`): `scores` holds `value` and, for regression, `mape` (and
    `fold_std` for leave-one-subject-out). `layer` is the original M2D layer number; `final_layer` marks L-1.
    """
    sizes = {split: run.dataset[split].num_rows if split in run.dataset else 0 for split in SPLITS}
    return {
        "task": run.task.id,
        "task_name": run.task.name,
        "metric": run.task.metric_name,
        "layer": layer,
        "final_layer": final_layer,
        "seed": seed,
        **{name: float(score) for name, score in scores.items()},
        "best_epoch": best_epoch,
        "n_train": sizes["train"],
        "n_validation": sizes["validation"],
        "n_test": sizes["test"],
    }


def load_model(model_name_or_path: str | Path, device: str | None = None) -> RespM2DModel:
    """The encoder of a converted (or fine-tuned) folder or Hub repo, in eval mode on `device` (GPU when present)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RespM2DModel.from_pretrained(model_name_or_path).eval().to(device)


def build_opera_task(task_id: str, opera_root: str | Path, allow_missing: bool) -> tuple[DatasetDict, str | None]:
    """An OPERA task's DatasetDict, and a note (also logged) on the recordings `allow_missing` left out, or None."""
    dataset, report = build_task(task_id, opera_root, allow_missing=allow_missing, return_report=True)
    note = report.left_out_note()
    if note:
        logger.warning(note)
    return dataset, note


def opera_job(task_id: str, opera_root: str | Path | None, allow_missing: bool = False) -> Job:
    """An OPERA task with the protocol object `resp-hf opera protocol` prints; built from `opera_root` on `load()`."""
    task = get_task(task_id)
    return Job(task, get_protocol(task.id), partial(build_opera_task, task.id, opera_root, allow_missing))


def saved_dataset_job(path: str | Path) -> Job:
    """A DatasetDict saved on disk, with OPERA's common recipe as its protocol."""
    dataset = load_from_disk(str(path))
    task = saved_dataset_task(path, dataset)
    check_split_labels(dataset, "label", path)
    check_disjoint_splits(dataset, "audio", path)
    return Job(task, saved_dataset_protocol(task, has_folds(dataset)), lambda: (dataset, None))


def benchmark_jobs(
    tasks: Sequence[str], opera_root: str | Path | None, datasets: Sequence[str | Path], allow_missing: bool
) -> list[Job]:
    """One `Job` per task; task ids, the OPERA root and the saved datasets are checked here, before a model loads."""
    if tasks and opera_root is None:
        raise ValueError("OPERA tasks need --opera-root (the OPERA checkout with the datasets).")
    jobs = [opera_job(task, opera_root, allow_missing) for task in tasks]
    if tasks:
        check_root(opera_root)
    return jobs + [saved_dataset_job(path) for path in datasets]


def check_cache_dir(cache_dir: str | Path | None, inputs: Sequence) -> None:
    """Refuses an embedding cache that is a file, or lies inside an input folder (the model's, a dataset's, OPERA's)."""
    if cache_dir is None:
        return
    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ValueError(f"The cache_dir {cache_dir} is a file; pass a folder.")
    check_outside_inputs(cache_dir, inputs, name="The cache_dir")


def quantized_copy(model: torch.nn.Module, method: str) -> torch.nn.Module:
    """`quantize(model, method)`; for the CPU-only methods (int8, fp32) made on the CPU, with `model` put back after."""
    device = next(model.parameters()).device
    if method == "bf16" or device.type == "cpu":
        return quantize(model, method)
    try:
        return quantize(model.to("cpu"), method)
    finally:
        model.to(device)


def run_benchmark(
    model: RespM2DModel | str | Path,
    output_dir: str | Path,
    *,
    tasks: Sequence[str] = (),
    opera_root: str | Path | None = None,
    datasets: Sequence[str | Path] = (),
    settings: BenchmarkSettings | None = None,
    model_name: str | None = None,
    cache_dir: str | Path | None = None,
) -> list[dict]:
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
    check_output_folder(output_dir, settings.overwrite, option="overwrite=True (--overwrite)", may_hold=(CACHE_FOLDER,))
    check_cache_dir(cache_dir, (model, *datasets, opera_root))
    jobs = benchmark_jobs(tasks, opera_root, datasets, settings.allow_missing)
    if isinstance(model, (str, Path)):
        model_name = model_name or Path(model).name
        model = load_model(model)
    embedder = Embedder(model, settings, cache_dir or output_dir / CACHE_FOLDER)
    if settings.quantize:  # the cache key holds the float32 weights' fingerprint and the quantization method
        embedder.model = quantized_copy(model, settings.quantize)
        model_name = f"{model_name or 'model'} ({settings.quantize})"
    runs, notes = [], []
    for job in jobs:  # every task is built and checked before anything is embedded
        dataset, note = job.load()
        notes += [note] if note else []
        dataset = with_validation(job.task, job.protocol, dataset)
        check_splits(job.task, dataset)
        protocol = settings.applied_to(job.protocol)
        protocol.check_epochs(protocol.epochs)
        runs.append(TaskRun(job.task, protocol, dataset))
    remove_outputs(output_dir, (*RESULT_FILES, "plots", "predictions"))  # only --overwrite gets here with them
    predictions_dir = output_dir / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    records = []
    try:
        for run in runs:
            evaluate = evaluate_folds if has_folds(run.dataset) else evaluate_splits
            logger.info("Evaluating %s (%s)", run.task.id, run.task.name)
            records += evaluate(run, embedder, predictions_dir)
    except BaseException:  # a failed run leaves only the embedding cache, so that it can be run again
        shutil.rmtree(predictions_dir, ignore_errors=True)
        raise
    write_results(records, output_dir, model_name or "model", notes=notes)
    return records
