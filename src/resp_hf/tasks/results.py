"""Results of `resp-hf tasks benchmark`, written by the linear-probe benchmark's writers (`linear_probe/results.py`).

Each run (task, protocol, seed, test split) becomes one linear-probe record per challenge metric (`Score`, `Sp`, `Se`
and, for SPRSound, `AS`), in percent. A table column is a task and test split (`icbhi-4class`,
`sprsound-1-2 inter_test_2022`); its rows are this model's protocols (`model (fine-tuned)`, `model (linear probe)`)
and the published figures of `published.csv`. `results.md` holds one such table per metric, `results.csv` the
records with their `protocol` and `test_split`, `results.json` the summaries and `plots/<task>-<split>.png` the Score.
"""

import json
from pathlib import Path

import numpy as np

from ..linear_probe.results import (
    CSV_COLUMNS,
    aggregate,
    baselines_source,
    comparison_rows,
    csv_rows,
    json_report,
    load_published_table,
    markdown_table,
    metric_decimals,
    metric_header,
    plot_bars,
    write_csv,
)
from ..output_folders import write_text_atomically

PUBLISHED_FILE = "published.csv"
# The metrics of each dataset's challenge in table order, with their key in `resp_hf.metrics`' results.
CHALLENGE_METRICS = {
    "icbhi": {"Score": "icbhi_score", "Sp": "specificity", "Se": "sensitivity"},
    "sprsound": {"Score": "score", "AS": "average_score", "Sp": "specificity", "Se": "sensitivity"},
}
PROTOCOL_NAMES = {"finetune": "fine-tuned", "linear": "linear probe"}
TASK_CSV_COLUMNS = ("protocol", "test_split", *CSV_COLUMNS)


def column_name(task, split):
    """A table column: the task alone on its only test split (`test`), else the task and the split."""
    return task if split == "test" else f"{task} {split}"


def load_published():
    """The published figures shipped with the package, one dict per (task, split, model, metric), in percent."""
    rows = load_published_table("resp_hf.tasks", PUBLISHED_FILE, ("mean", "std"))
    for row in rows:
        row["task"] = column_name(row["task"], row["test_split"])
    return rows


def metric_records(runs, metric):
    """
    The linear-probe records of `metric` (percent), one per run that has a finite value; returns `(records, notes)`,
    a note naming each run whose value is undefined (e.g. no abnormal test sample for Se).
    """
    records, notes = [], []
    for run in runs:
        value = run["scores"].get(metric)
        if value is None:
            continue
        column = column_name(run["task"], run["test_split"])
        if not np.isfinite(value):
            notes.append(f"{column} {metric} is undefined for {run['protocol']} seed {run['seed']} (left out).")
            continue
        copied = ("protocol", "seed", "layer", "final_layer", "best_epoch", "n_train", "n_validation", "n_test")
        record = {key: run[key] for key in copied}
        record.update(task=column, task_name=f"{run['task']} ({run['test_split']})", metric=metric, value=100 * value)
        records.append(record)
    return records, notes


def summaries_by_protocol(records):
    """`{protocol: aggregate(records of that protocol)}` in the order the protocols ran."""
    protocols = dict.fromkeys(record["protocol"] for record in records)
    return {protocol: aggregate([r for r in records if r["protocol"] == protocol]) for protocol in protocols}


def protocol_label(model_name, protocol):
    """`model (fine-tuned)` or `model (linear probe)`."""
    return f"{model_name} ({PROTOCOL_NAMES[protocol]})"


def metric_table(by_protocol, published, model_name):
    """One metric's Markdown table lines: this model's protocols, then the published models; a column per task."""
    task_metrics = {s["task"]: s["metric"] for summaries in by_protocol.values() for s in summaries}
    rows = []
    for protocol, summaries in by_protocol.items():
        rows += comparison_rows(summaries, [], protocol_label(model_name, protocol))
    rows += comparison_rows([], [row for row in published if row["task"] in task_metrics], model_name)
    return markdown_table(rows, task_metrics)


def plot_scores(plot_dir, by_protocol, published, model_name, split_of):
    """`<task>-<split>.png` per column: the Score of each protocol (mean ± std) beside the published Scores."""
    paths = []
    columns = dict.fromkeys(s["task"] for summaries in by_protocol.values() for s in summaries)
    for column in columns:
        evaluated = [
            (protocol_label(model_name, protocol), s["mean"], s["std"])
            for protocol, summaries in by_protocol.items()
            for s in summaries
            if s["task"] == column
        ]
        baselines = [(row["model"], row["mean"], row["std"] or 0.0) for row in published if row["task"] == column]
        task, split = split_of[column]
        path = plot_dir / f"{task}-{split}.png"
        value_format = f"{{:.{metric_decimals('Score')}f}}"
        plot_bars(path, evaluated, baselines, metric_header("Score"), column, value_format=value_format)
        paths.append(path)
    return paths


def write_task_results(runs, output_dir, model_name, notes=()):
    """
    Writes results.csv, results.md, results.json and plots/ for the runs of `run_task_benchmark`; returns the paths.
    Each run is `{"task", "protocol", "seed", "test_split", "layer", "final_layer", "best_epoch", "n_train",
    "n_validation", "n_test", "scores": {metric: fraction}}` with the metrics of `CHALLENGE_METRICS`.
    """
    if not runs:
        raise ValueError("No runs to write: run at least one (task, protocol, seed) first.")
    output_dir = Path(output_dir)
    (output_dir / "plots").mkdir(parents=True, exist_ok=True)
    published, notes = load_published(), list(notes)
    split_of = {column_name(run["task"], run["test_split"]): (run["task"], run["test_split"]) for run in runs}
    tables, csv_lines, json_rows, shown_published, plots = [], [], [], [], []
    for metric in dict.fromkeys(metric for run in runs for metric in run["scores"]):
        records, undefined = metric_records(runs, metric)
        notes += undefined
        if not records:
            continue
        by_protocol = summaries_by_protocol(records)
        columns = {s["task"] for summaries in by_protocol.values() for s in summaries}
        metric_published = [row for row in published if row["metric"] == metric and row["task"] in columns]
        shown_published += metric_published
        tables += ["", f"## {metric_header(metric)}", "", *metric_table(by_protocol, metric_published, model_name)]
        for protocol, summaries in by_protocol.items():
            protocol_records = [record for record in records if record["protocol"] == protocol]
            for row in csv_rows(protocol_records, summaries):
                csv_lines.append({**row, "protocol": protocol, "test_split": split_of[row["task"]][1]})
            for row in json_report(summaries, [], model_name)["results"]:
                json_rows.append({**row, "protocol": protocol, "test_split": split_of[row["task"]][1]})
        if metric == "Score":
            plots = plot_scores(output_dir / "plots", by_protocol, metric_published, model_name, split_of)
    paths = {"csv": output_dir / "results.csv", "markdown": output_dir / "results.md"}
    paths["json"], paths["plots"] = output_dir / "results.json", plots
    write_csv(paths["csv"], csv_lines, columns=TASK_CSV_COLUMNS)
    lines = [f"# Respiratory-sound task results: {model_name}", *tables, "", methods_text(runs, shown_published)]
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    write_text_atomically(paths["markdown"], "\n".join(lines) + "\n")
    report = {"model_name": model_name, "results": json_rows, "baselines_source": baselines_source(shown_published)}
    report["notes"] = notes
    write_text_atomically(paths["json"], json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return paths


def methods_text(runs, published):
    """What the table's numbers are: seeds, epoch selection, and where the published rows come from."""
    seeds = sorted({run["seed"] for run in runs})
    text = (
        f"Best mean per column in bold. This model: mean ± std (population, ddof=0) over seeds {seeds} of the test "
        "score at the epoch with the best validation score; Sp, Se and Score as the ICBHI challenge defines them, AS "
        "and Score as the SPRSound challenge does (`resp_hf.metrics`)."
    )
    if published:
        text += (
            " Published rows: as printed in their sources (most select the epoch on the test set; M2D's SPRSound "
            f"figures are (Sp + Se) / 2, the AS column): {baselines_source(published)}."
        )
    return text


__all__ = ["CHALLENGE_METRICS", "load_published", "write_task_results"]
