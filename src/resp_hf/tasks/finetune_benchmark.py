"""Fine-tuning benchmark on the ICBHI cycle and SPRSound tasks: full fine-tuning and linear probing over seeds.

Each (task, protocol, seed) trains a `RespM2DForAudioClassification` through `Trainer` on fixed-length windows,
keeps the epoch with the best validation score, and scores every test split with the challenge's formula. The output
folder holds the linear-probe benchmark's files (`results.csv`, `results.md`, `results.json`, `plots/`, see
`tasks/results.py`) beside the published figures of `published.csv`, and `predictions/*.npz`.
"""

import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from ..linear_probe.results import RESULT_FILES
from ..metrics import build_challenge_compute_metrics
from ..models.resp_m2d import RespM2DFeatureExtractor, RespM2DForAudioClassification
from ..output_folders import check_output_folder, remove_outputs, save_npz
from ..training.finetune import AudioClassificationCollator, strip_prefix
from .icbhi import build_icbhi_cycles
from .results import CHALLENGE_METRICS, write_task_results
from .segments import SegmentWindow, decode_segments
from .sprsound import build_sprsound

PROTOCOLS = ("finetune", "linear")


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one protocol, with where they come from."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float  # Adam's L2 penalty (torch.optim.Adam weight_decay), as in the source
    schedule: str  # "cosine": CosineAnnealingLR per epoch (cosine_epochs, min_learning_rate); "exponential": x gamma
    cosine_epochs: int = 40
    min_learning_rate: float = 1e-6
    gamma: float = 0.97
    class_weighted: bool = True
    freeze_patch_embedding: bool = True
    source: str = ""


# nttcslab/m2d app/icbhi_sprs: eval_icbhi.sh (150 epochs, batch 64, lr 5e-5, --freeze_embed) and eval_sprs.sh
# (50 epochs, lr 5e-6) run ilyassmoummad/scl_icbhi2017 main.py (Adam with weight decay 1e-4, CosineAnnealingLR
# T_max=40 eta_min=1e-6 stepped per epoch, cross-entropy weighted by inverse training class frequency).
M2D_SOURCE = "nttcslab/m2d app/icbhi_sprs eval_{}.sh on ilyassmoummad/scl_icbhi2017 main.py/args.py"
FINETUNE_RECIPES = {
    "icbhi": Recipe(150, 64, 5e-5, 1e-4, "cosine", source=M2D_SOURCE.format("icbhi")),
    "sprsound": Recipe(50, 64, 5e-6, 1e-4, "cosine", source=M2D_SOURCE.format("sprs")),
}
# OPERA's linear evaluation (Zhang et al., NeurIPS 2024 Datasets and Benchmarks; the recipe resp-hf benchmark uses):
# Adam at 1e-4 multiplied by 0.97 every epoch, L2 1e-5, 64 epochs, batch 64; the encoder is frozen.
LINEAR_RECIPE = Recipe(
    64,
    64,
    1e-4,
    1e-5,
    "exponential",
    class_weighted=False,
    freeze_patch_embedding=False,
    source="OPERA linear evaluation (Zhang et al. 2024), encoder frozen",
)


@dataclass(frozen=True)
class ChallengeTask:
    """An ICBHI or SPRSound challenge task: which dataset builds it, which label column to learn, how to score it."""

    name: str
    dataset: str  # "icbhi" or "sprsound"
    label_column: str
    scoring: str  # a build_challenge_compute_metrics scoring
    sprsound_task: str = ""


TASKS = {
    "icbhi-4class": ChallengeTask("icbhi-4class", "icbhi", "label", "icbhi"),
    "icbhi-2class": ChallengeTask("icbhi-2class", "icbhi", "label_2class", "icbhi"),
    "sprsound-1-1": ChallengeTask("sprsound-1-1", "sprsound", "label", "sprsound", "event_binary"),
    "sprsound-1-2": ChallengeTask("sprsound-1-2", "sprsound", "label", "sprsound", "event_multiclass"),
    "sprsound-2-1": ChallengeTask("sprsound-2-1", "sprsound", "label", "sprsound", "record_ternary"),
    "sprsound-2-2": ChallengeTask("sprsound-2-2", "sprsound", "label", "sprsound", "record_multiclass"),
}
MAIN_METRIC = {"icbhi": "icbhi_score", "sprsound": "score"}
DATASET_NAMES = {"opera": "OPERA", "icbhi": "ICBHI", "sprsound": "SPRSound"}
# The build options of the cycle/event tasks (Python name: command-line flag) and the datasets they apply to.
BUILD_OPTIONS = {
    "split_file": ("--split_file", ("icbhi",)),
    "validation_fraction": ("--validation_fraction", ("icbhi", "sprsound")),
    "validation_seed": ("--validation_seed", ("icbhi", "sprsound")),
    "skip_invalid": ("--skip_invalid_cycles", ("icbhi", "sprsound")),
}


@dataclass
class TaskBenchmarkSettings:
    """What to run; `epochs`/`batch_size`/`learning_rate` override every recipe (e.g. for a quick check)."""

    protocols: tuple = PROTOCOLS
    seeds: tuple = (0, 1, 2)
    window: SegmentWindow = SegmentWindow()
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    validation_fraction: float | None = None  # of the training patients; None: the dataset's default (0.2)
    validation_seed: int | None = None  # None: the dataset's default (1337)
    split_file: str | None = None  # an ICBHI split file other than the official one (tests)
    select_epoch_on: str = "validation"  # or a test split: the published scripts' choice (optimistic)


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; expected one of {list(TASKS)}.")
    return TASKS[name]


def recipe_for(task, protocol, settings):
    """The protocol's published recipe with the settings' overrides applied."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}.")
    recipe = FINETUNE_RECIPES[task.dataset] if protocol == "finetune" else LINEAR_RECIPE
    overrides = {"epochs": settings.epochs, "batch_size": settings.batch_size, "learning_rate": settings.learning_rate}
    return replace(recipe, **{key: value for key, value in overrides.items() if value is not None})


def check_options_apply(
    names: Sequence[str], datasets: set[str], settings: TaskBenchmarkSettings, skip_invalid=False
) -> None:
    """
    Refuses the build options given (not None; `skip_invalid` set) for tasks `names` whose `datasets` ("opera",
    "icbhi", "sprsound") they apply to none of: such an option would otherwise be ignored.
    """
    given = {
        "split_file": settings.split_file,
        "validation_fraction": settings.validation_fraction,
        "validation_seed": settings.validation_seed,
        "skip_invalid": skip_invalid or None,
    }
    unused = [
        f"{option}={value!r} ({BUILD_OPTIONS[option][0]})"
        for option, value in given.items()
        if value is not None and not datasets & set(BUILD_OPTIONS[option][1])
    ]
    if unused:
        sources = " and ".join(sorted(DATASET_NAMES[dataset] for dataset in datasets))
        tasks = "task" if len(names) == 1 else "tasks"
        raise ValueError(
            f"{', '.join(unused)} do(es) not apply to the {sources} {tasks} {', '.join(names)}: leave them out."
        )


def build_task_dataset(task, roots, settings, skip_invalid=False):
    """`(DatasetDict, report)` of a task from `roots` (`{"icbhi": folder, "sprsound": folder}`)."""
    root = roots.get(task.dataset)
    if root is None:
        raise ValueError(f"Task {task.name} needs the {task.dataset} data: pass --{task.dataset}-root.")
    given = {"validation_fraction": settings.validation_fraction, "seed": settings.validation_seed}
    options = {name: value for name, value in given.items() if value is not None}  # else the dataset's defaults
    if task.dataset == "icbhi":
        return build_icbhi_cycles(root, settings.split_file, skip_invalid=skip_invalid, **options)
    return build_sprsound(root, task.sprsound_task, skip_invalid=skip_invalid, **options)


def class_weights(labels, num_labels):
    """Inverse class frequencies normalized to sum to 1 (scl_icbhi2017 main.py); absent classes weigh 0."""
    counts = np.bincount(np.asarray(labels), minlength=num_labels).astype(np.float64)
    inverse = np.divide(counts.sum(), counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(inverse / inverse.sum(), dtype=torch.float32)


def learning_rate_factor(recipe, steps_per_epoch):
    """The schedule as a per-step multiplier of the base rate, constant within an epoch (the sources step per epoch)."""

    def factor(step):
        epoch = step // steps_per_epoch
        if recipe.schedule == "exponential":
            return recipe.gamma**epoch
        low = recipe.min_learning_rate / recipe.learning_rate
        return low + (1 - low) * (1 + math.cos(math.pi * epoch / recipe.cosine_epochs)) / 2

    return factor


def make_model(model_path, names, protocol, recipe):
    """A classifier with a new head over `names`: encoder frozen for `linear`, patch embedding as the recipe says."""
    model = RespM2DForAudioClassification.from_pretrained(
        model_path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
        problem_type="single_label_classification",
        freeze_encoder=protocol == "linear",
        ignore_mismatched_sizes=True,
    )
    if recipe.freeze_patch_embedding:  # M2D's --freeze_embed: the patch projection stays as pre-trained
        model.resp_m2d.embeddings.patch_embeddings.requires_grad_(False)
    return model


def train_one(model_path, task, dataset, protocol, seed, settings, run_dir):
    """Trains one (protocol, seed) run; returns `(trainer, decoded splits, best epoch)`, the best epoch loaded."""
    recipe = recipe_for(task, protocol, settings)
    names = dataset["train"].features[task.label_column].names
    torch.manual_seed(seed)
    model = make_model(model_path, names, protocol, recipe)
    feature_extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    splits = decode_segments(dataset, feature_extractor.sampling_rate, settings.window)
    steps_per_epoch = math.ceil(len(dataset["train"]) / recipe.batch_size)
    optimizer = torch.optim.Adam(
        [parameter for parameter in model.parameters() if parameter.requires_grad],
        lr=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(recipe, steps_per_epoch))
    weights = class_weights(dataset["train"][task.label_column], len(names)) if recipe.class_weighted else None

    def weighted_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        return torch.nn.functional.cross_entropy(logits, labels, weight=weights.to(logits.device))

    args = TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_only_model=True,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=MAIN_METRIC[task.scoring],
        greater_is_better=True,
        seed=seed,
        remove_unused_columns=False,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits[settings.select_epoch_on],
        data_collator=AudioClassificationCollator(
            feature_extractor, "audio", task.label_column, "single_label_classification", len(names)
        ),
        compute_metrics=build_challenge_compute_metrics(task.scoring),
        compute_loss_func=weighted_loss if weights is not None else None,
        optimizers=(optimizer, scheduler),
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    best_epoch = best_epoch_of(trainer.state.log_history, best)
    return trainer, splits, best_epoch


def best_epoch_of(log_history, best_checkpoint):
    """The epoch whose evaluation produced the kept checkpoint (`checkpoint-<step>`)."""
    if not best_checkpoint:
        return None
    step = int(Path(best_checkpoint).name.split("-")[-1])
    for entry in log_history:
        if entry.get("step") == step and "epoch" in entry:
            return int(round(entry["epoch"]))
    return None


def test_splits(dataset):
    """The splits scored at the end: every split except train and validation."""
    return [name for name in dataset if name not in ("train", "validation")]


def classifier_layer(config):
    """`(layer, final_layer)` the head reads, in the original M2D numbering (`RespM2DModel.layer_output`)."""
    last = config.num_hidden_layers - 1
    if config.classifier_layer is None:
        return str(last), True
    if config.classifier_layer == "weighted":
        return "weighted", False
    layer = config.classifier_layer % config.num_hidden_layers
    return str(layer), layer == last


def run_task(model_path, task, dataset, settings, output_dir):
    """All (protocol, seed) runs of one task; returns their results (one per test split, see `write_task_results`)."""
    runs = []
    for protocol in settings.protocols:
        for seed in settings.seeds:
            run_dir = output_dir / "runs" / f"{task.name}-{protocol}-seed{seed}"
            trainer, splits, best_epoch = train_one(model_path, task, dataset, protocol, seed, settings, run_dir)
            layer, final_layer = classifier_layer(trainer.model.config)
            for split in test_splits(dataset):
                output = trainer.predict(splits[split], metric_key_prefix="test")
                metrics = strip_prefix(output.metrics, "test_")
                save_predictions(output_dir, task.name, protocol, seed, split, output)
                runs.append(
                    {
                        "task": task.name,
                        "protocol": protocol,
                        "seed": seed,
                        "test_split": split,
                        "layer": layer,
                        "final_layer": final_layer,
                        "best_epoch": best_epoch,
                        "n_train": len(dataset["train"]),
                        "n_validation": len(dataset["validation"]),
                        "n_test": len(dataset[split]),
                        "scores": {name: metrics[key] for name, key in CHALLENGE_METRICS[task.scoring].items()},
                    }
                )
            shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints: the predictions and scores are kept
    shutil.rmtree(output_dir / "runs", ignore_errors=True)
    return runs


def save_predictions(output_dir, task, protocol, seed, split, output):
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    path = output_dir / "predictions" / f"{task}-{protocol}-seed{seed}-{split}.npz"
    save_npz(path, logits=logits, labels=output.label_ids)


def check_trainable(task, dataset, select_epoch_on="validation"):
    """
    Raises ValueError unless train holds two classes, the split that selects the epoch (`select_epoch_on`) holds
    normal and abnormal rows (the score that picks the epoch is undefined otherwise) and there is a test split.
    """
    for split in ("train", "validation"):
        if len(dataset.get(split, [])) == 0:
            raise ValueError(f"Task {task.name} has no {split} rows; it cannot be trained and its epoch selected.")
    if not test_splits(dataset):
        raise ValueError(f"Task {task.name} has no test split; the data holds only {list(dataset)}.")
    if select_epoch_on not in ("validation", *test_splits(dataset)):
        raise ValueError(
            f"Task {task.name}: cannot select epochs on {select_epoch_on!r}; choose validation or a test split of "
            f"this task: {test_splits(dataset)}."
        )
    classes = set(dataset["train"][task.label_column])
    if len(classes) < 2:
        names = dataset["train"].features[task.label_column].names
        raise ValueError(
            f"Task {task.name}: the training split holds only {[names[c] for c in classes]} cycles; "
            "a classifier needs at least two classes (choose another validation seed or fraction)."
        )
    selecting = set(dataset[select_epoch_on][task.label_column])
    if 0 not in selecting or selecting == {0}:
        raise ValueError(
            f"Task {task.name}: the {select_epoch_on} split needs normal and abnormal rows to score epochs; it holds "
            f"classes {sorted(selecting)} (choose another --validation-seed or --validation-fraction)."
        )


def run_task_benchmark(
    model_path: str | Path,
    output_dir: str | Path,
    task_names: Sequence[str],
    roots: dict[str, str | Path],
    settings: TaskBenchmarkSettings | None = None,
    model_name: str | None = None,
    overwrite: bool = False,
) -> dict:
    """
    Builds each task (all checked before training), runs every (protocol, seed), and writes the results; returns the
    written paths. `roots` maps "icbhi" / "sprsound" to the data folders; `output_dir` must be empty unless
    `overwrite`, which replaces an earlier run's results.
    """
    settings = settings or TaskBenchmarkSettings()
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite, option="overwrite=True (--overwrite)")
    tasks = [get_task(name) for name in task_names]
    check_options_apply(task_names, {task.dataset for task in tasks}, settings)
    for task in tasks:
        for protocol in settings.protocols:
            recipe_for(task, protocol, settings)  # an unknown protocol fails before any data is read
    built = {}
    notes = []
    for task in tasks:
        dataset, report = build_task_dataset(task, roots, settings)
        check_trainable(task, dataset, settings.select_epoch_on)
        built[task.name] = dataset
        notes.append(f"{task.name}: " + str(report).replace("\n", ";"))
    remove_outputs(output_dir, (*RESULT_FILES, "plots", "predictions", "runs"))  # only overwrite gets here with them
    runs = []
    for task in tasks:
        runs += run_task(model_path, task, built[task.name], settings, output_dir)
    settings_note = {key: value for key, value in asdict(settings).items() if key != "window"}
    notes.append(f"settings: {settings_note}, window {settings.window}")
    if settings.select_epoch_on != "validation":
        notes.append(
            f"epochs selected on the {settings.select_epoch_on} split, as M2D's app/icbhi_sprs and Patch-Mix do: "
            "the scores are optimistic (the test split picks the epoch it is scored on)"
        )
    return write_task_results(runs, output_dir, model_name or Path(str(model_path)).name, notes)


__all__ = ["TASKS", "TaskBenchmarkSettings", "run_task_benchmark"]
