"""Model cards: YAML front matter from `huggingface_hub.ModelCardData`, bodies from the templates in `hub_cards/`."""

import json
import logging
import re
from pathlib import Path
from string import Template

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .output_folders import write_text_atomically

logger = logging.getLogger(__name__)

TAGS = ["audio", "respiratory-sounds", "m2d", "resp_hf"]
# Loading snippets of cards written next to a local folder use this in place of the repo id until the folder is pushed.
LOCAL_REPO_PLACEHOLDER = "path/to/this/folder"
METRIC_TYPES = {
    "auroc": "roc_auc",
    "accuracy": "accuracy",
    "mae": "mae",
    "rmse": "rmse",
    "mape": "mape",
    "sp": "specificity",  # the ICBHI and SPRSound challenges' Sp, Se and Score (their mean)
    "se": "sensitivity",
    "score": "score",
    "as": "average_score",
}


def card_template(name):
    """Reads `hub_cards/<name>.md` from the installed package or, in a source checkout, the repository root."""
    package_dir = Path(__file__).resolve().parent
    for folder in (package_dir / "hub_cards", package_dir.parents[1] / "hub_cards"):
        path = folder / f"{name}.md"
        if path.is_file():
            return Template(path.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"Model card template {name}.md not found next to the package or in the source tree.")


def render_card(template, card_data, **fields):
    """Front matter plus the template body, with the shared limitations and citation sections."""
    common = card_template("common_sections").template.strip()
    body = card_template(template).substitute(common_sections=common, **fields)
    return f"---\n{card_data.to_yaml()}\n---\n\n{body.strip()}\n"


def metrics_table(results):
    """Markdown table of `{split: {metric: value}}`."""
    metrics = sorted({name for values in results.values() for name in values})
    lines = ["| split | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for split, values in results.items():
        lines.append(f"| {split} | " + " | ".join(f"{values[m]:.4f}" if m in values else "" for m in metrics) + " |")
    return "\n".join(lines)


def eval_results(results, task_type, dataset_name, dataset_type):
    """`model-index` entries for the known metrics of `{split: {metric: value}}`."""
    return [
        EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=METRIC_TYPES[metric],
            metric_value=float(value),
        )
        for split, values in results.items()
        for metric, value in values.items()
        if metric in METRIC_TYPES
    ]


CONVERTED_TRAINING_DATA = (
    "Converted from the original checkpoint named above; see its release for the pre-training data (M2D models are "
    "pre-trained on AudioSet, M2D+Resp further on AudioSet mixed with respiratory datasets)."
)


def encoder_card(config, source_name, sha256, repo_id=None, name=None, training_data=CONVERTED_TRAINING_DATA):
    """Card of an encoder: converted from an official checkpoint by default, else as `training_data` says."""
    model_name = repo_id or name or "resp-m2d"
    card_data = ModelCardData(
        library_name="transformers", license="other", pipeline_tag="feature-extraction", tags=TAGS
    )
    return render_card(
        "resp_m2d_encoder",
        card_data,
        model_name=model_name,
        repo_id=repo_id or LOCAL_REPO_PLACEHOLDER,
        source_name=source_name,
        sha256=sha256,
        sampling_rate=config.sampling_rate,
        num_mel_bins=config.num_mel_bins,
        f_min=f"{config.f_min:g}",
        f_max=f"{config.f_max:g}",
        n_fft=config.n_fft,
        win_length=config.win_length,
        hop_length=config.hop_length,
        unit_frames=config.unit_frames,
        patch_f=config.patch_size[0],
        patch_t=config.patch_size[1],
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        norm_mean=f"{config.norm_mean:g}",
        norm_std=f"{config.norm_std:g}",
        pooled_size=config.pooled_size,
        pooling=config.pooling,
        frame_embedding_size=config.frame_embedding_size,
        training_data=training_data,
        evaluation="Not evaluated by `resp_hf` yet.",
    )


def hub_id(name):
    """`name` if it can be a Hub repo id, else None (a local path or "unknown", which card metadata must not hold)."""
    if not name or name == "unknown" or Path(name).exists():
        return None
    return name if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) and not name.startswith(".") else None


def cached_repo_id(path, repo_type):
    """The repo id of a Hub cache snapshot (`.../models--org--name/snapshots/<revision>/...`), else None."""
    for part in Path(path).resolve().parts:
        if part.startswith(f"{repo_type}s--"):
            return "/".join(part.split("--")[1:])
    return None


def model_hub_id(source):
    """
    The Hub id of the model at `source` when known: `source` itself, the repository of a Hub cache snapshot, or the
    `org/name` that the folder's `config.json` (`_name_or_path`, written by older Transformers) or card
    (`base_model`) names. None for a local model of unknown origin.
    """
    if hub_id(source) or not Path(source).is_dir():
        return hub_id(source)
    folder = Path(source)
    named = [cached_repo_id(folder, "model")]
    if (folder / "config.json").is_file():
        named.append(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path"))
    named.append(card_metadata(folder).get("base_model"))
    return next((name for name in named if isinstance(name, str) and "/" in name and hub_id(name)), None)


def card_metadata(folder):
    """The front matter of the card in `folder` as a dict (empty without a card, or with a warning when malformed)."""
    path = Path(folder) / "README.md"
    if not path.is_file():
        return {}
    try:
        return ModelCard(path.read_text(encoding="utf-8")).data.to_dict()
    except (ValueError, yaml.YAMLError) as error:
        logger.warning(f"Ignoring the metadata of {path}: it is not a valid card ({error}).")
        return {}


def dataset_hub_id(source):
    """The Hub id of a dataset: `source` itself or the repository of a Hub cache snapshot; None for a local one."""
    return hub_id(source) or (cached_repo_id(source, "dataset") if Path(source).exists() else None)


def dataset_slug(name):
    """A metadata-safe dataset type: the Hub id, or the last part of a local path."""
    return hub_id(name) or re.sub(r"[^\w.-]+", "-", Path(name).name).strip("-.") or "local-dataset"


def describe_source(source, source_id):
    """A base model or dataset in card text: its Hub id, or a local folder by its name only (not the whole path)."""
    if source_id or source in (None, "unknown"):
        return f"`{source_id or 'unknown'}`"
    return f"`{Path(source).name}` (a local folder)"


def classifier_card(config, base_model, dataset_name, results, repo_id=None, name=None, training_data=None):
    """
    Card of a fine-tuned classifier; `results` is `{split: {metric: value}}` (e.g. validation and test). The metadata
    names the base model and the dataset by their Hub ids when known (see `model_hub_id`, `dataset_hub_id`) and
    leaves them out otherwise: local paths are named in the text only, and results on a local dataset stay out of
    `model-index` (they are in the Evaluation table).
    """
    model_name = repo_id or name or "resp-m2d-classifier"
    regression = config.problem_type == "regression"
    base_model_id, dataset_id = model_hub_id(base_model), dataset_hub_id(dataset_name)
    evaluations = eval_results(results, "audio-classification", dataset_id, dataset_id) if dataset_id else []
    card_data = ModelCardData(
        library_name="transformers",
        license="other",
        pipeline_tag="audio-classification",
        tags=TAGS,
        datasets=[dataset_id] if dataset_id else None,
        metrics=["mae"] if regression else ["roc_auc", "accuracy"],
        base_model=base_model_id,
        model_name=model_name,
        eval_results=evaluations or None,
    )
    labels = ", ".join(f"`{config.id2label[i]}`" for i in range(config.num_labels))
    multi_label = config.problem_type == "multi_label_classification"
    return render_card(
        "resp_m2d_classifier",
        card_data,
        model_name=model_name,
        repo_id=repo_id or LOCAL_REPO_PLACEHOLDER,
        base_model=describe_source(base_model, base_model_id),
        problem_type=config.problem_type,
        labels=labels,
        pooling=config.pooling,
        classifier_layer=config.classifier_layer,
        freeze_encoder=config.freeze_encoder,
        sampling_rate=config.sampling_rate,
        multi_label_note=(
            "This is a multi-label model: the pipeline scores each label with a sigmoid "
            '(`function_to_apply="sigmoid"` is the default for it).'
            if multi_label
            else ""
        ),
        training_data=training_data or f"Fine-tuned on {describe_source(dataset_name, dataset_id)}.",
        evaluation=metrics_table(results) if results else "No evaluation results were recorded.",
    )


def card_for_repo(text, repo_id):
    """A card written for a local folder, with its loading snippets pointing at `repo_id`."""
    return text.replace(LOCAL_REPO_PLACEHOLDER, repo_id)


def write_card(folder, text):
    """Writes `README.md` into `folder` and returns its path."""
    path = Path(folder) / "README.md"
    write_text_atomically(path, text)
    return path


def benchmark_table(results):
    """
    Markdown table of benchmark results (`results.json` entries): task, metric, layer (original M2D numbering, the
    final one marked), mean ± std and what the std is over (seeds, or the folds of a leave-one-subject-out run).
    """
    lines = ["| task | metric | layer | mean ± std | ± over |", "|---|---|---|---|---|"]
    for row in results:
        layer = f"{row['layer']} (final)" if row["final_layer"] and row["layer"].isdigit() else row["layer"]
        spread = "folds" if row.get("spread") == "folds" else f"{row['n_seeds']} seeds"
        lines.append(
            f"| {row['task']} ({row['task_name']}) | {row['metric']} | {layer} | "
            f"{row['mean']:.3f} ± {row['std']:.3f} | {spread} |"
        )
    return "\n".join(lines)


def is_opera_task(row):
    """Whether a results row is one of OPERA's tasks T1-T19 (the others come from `--dataset` folders)."""
    return re.fullmatch(r"T(1[0-9]|[1-9])", row["task"]) is not None


# What every row of a benchmark's results.json holds besides `final_layer`.
RESULT_ROW_KEYS = ("task", "task_name", "layer", "metric", "mean", "std", "n_seeds")


def read_results_file(results_path):
    """A results.json written by `resp-hf benchmark` or `resp-hf tasks benchmark`; anything else is a ValueError."""
    try:
        results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{results_path} is not a benchmark's results.json: it is not JSON text ({error}).") from None
    rows = results.get("results") if isinstance(results, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{results_path} is not a benchmark's results.json (no 'results' list of rows).")
    if any("final_layer" not in row for row in rows):
        raise ValueError(
            f"{results_path} names layers the old way ('last', '1'..'12'); rerun `resp-hf benchmark` for results with "
            "the original M2D layer numbers."
        )
    for number, row in enumerate(rows, 1):
        missing = [key for key in RESULT_ROW_KEYS if key not in row]
        if missing:
            raise ValueError(
                f"{results_path}: result row {number} lacks {', '.join(missing)}; pass the results.json that "
                "`resp-hf benchmark` wrote, unedited."
            )
    return results


def add_benchmark_results(folder, results_path):
    """
    Writes OPERA benchmark results into the card of `folder`: a `model-index` entry per task (the final layer's
    result, or every layer's when only intermediate layers were run) and a table in the Evaluation section.
    """
    card_path = Path(folder) / "README.md"
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder} has no README.md model card (convert and finetune write one).")
    results = read_results_file(results_path)
    rows = [row for row in results["results"] if row["final_layer"]] or results["results"]
    card = ModelCard(card_path.read_text(encoding="utf-8"))
    card.data.model_name = card.data.model_name or Path(folder).name
    card.data.eval_results = [
        EvalResult(
            task_type="audio-classification" if row["metric"] == "AUROC" else "audio-regression",
            dataset_type=f"opera-{row['task'].lower()}" if is_opera_task(row) else dataset_slug(row["task"]),
            dataset_name=f"OPERA {row['task']} ({row['task_name']})" if is_opera_task(row) else row["task_name"],
            dataset_split=row.get("test_split", "test"),
            metric_type=METRIC_TYPES[row["metric"].lower()],
            metric_value=round(float(row["mean"]), 4),
        )
        for row in rows
    ]
    baselines = f"; baselines: {results['baselines_source']}" if results.get("baselines_source") else ""
    if any("protocol" in row for row in results["results"]):  # written by `resp-hf tasks benchmark`
        protocol = "ICBHI / SPRSound challenge benchmark (fine-tuned and linear-probe, the challenge's Sp, Se, Score"
    else:
        protocol = "Linear-probe benchmark with OPERA's protocol (frozen encoder, linear head"
    body = f"{protocol}, mean ± std over seeds{baselines}):\n\n{benchmark_table(results['results'])}"
    section = re.compile(r"(## Evaluation\n\n)(.*?)(?=\n## |\Z)", re.DOTALL)
    if not section.search(card.text):
        raise ValueError(f"The card in {folder} has no '## Evaluation' section to write the results into.")
    card.text = section.sub(lambda match: match.group(1) + body + "\n", card.text, count=1)
    write_card(folder, str(card))
    return card_path
