"""Aggregating linear-probe runs over seeds and reporting them beside the published OPERA baselines.

A *record* is one (task, layer, seed) run::

    {"task": "T7", "task_name": "icbhi_copd", "metric": "AUROC", "layer": "11", "final_layer": True, "seed": 0,
     "value": 0.85, "best_epoch": 12, "n_train": 600, "n_validation": 70, "n_test": 250}

`layer` is the original M2D layer number (0..L-1, see `RespM2DModel.layer_output`) and
`final_layer` marks L-1, the encoder's output. Leave-one-subject-out records also carry `fold_std`, the standard
deviation of the MAE over the folds, which OPERA reports as ± for a single run.

`write_results` turns a list of records into `results.csv`, `results.md`, `results.json` and `plots/*.png`.
"""

import csv
import io
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np

from ..output_folders import write_text_atomically

BASELINES_FILE = "baselines.csv"
HIGHER_IS_BETTER = {"AUROC": True, "MAE": False, "Score": True, "Sp": True, "Se": True, "AS": True}
# The ICBHI and SPRSound challenge scores (`resp-hf tasks benchmark`) are percentages, printed with 2 decimals as in
# their papers; AUROC and MAE keep 3 decimals.
PERCENT_METRICS = ("Score", "Sp", "Se", "AS")
RECORD_KEYS = (
    "task",
    "task_name",
    "metric",
    "layer",
    "final_layer",
    "seed",
    "value",
    "best_epoch",
    "n_train",
    "n_validation",
    "n_test",
)
# Optional per-record values (regression tasks also report MAPE); written as extra CSV columns and summaries.
OPTIONAL_KEYS = ("mape", "fold_std")
CSV_COLUMNS = (*RECORD_KEYS, *OPTIONAL_KEYS)
RESULT_FILES = ("results.csv", "results.md", "results.json")
MISSING_CELL = "–"
MODEL_COLOR = "#d62728"
BASELINE_COLOR = "#9aa5b1"


def load_baselines():
    """The published OPERA baselines shipped with the package, one dict per (task, model), mean and std as floats."""
    return load_published_table("resp_hf.linear_probe", BASELINES_FILE, ("mean", "std"))


def load_published_table(package, name, numeric_columns):
    """The rows of the CSV file `name` shipped in `package`, with `numeric_columns` as floats (None where empty)."""
    text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    for row in rows:
        for column in numeric_columns:
            row[column] = float(row[column]) if row[column] else None
    return rows


def format_mean_std(mean, std, decimals=3):
    """`0.853 ± 0.012`: a mean and standard deviation with 3 decimals; the mean alone when `std` is None."""
    return f"{mean:.{decimals}f}" if std is None else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def metric_decimals(metric):
    """Decimals a table shows for `metric`: 2 for the challenge percentages, 3 otherwise."""
    return 2 if metric in PERCENT_METRICS else 3


def is_higher_better(metric):
    """Whether larger values of `metric` are better (AUROC) or smaller ones (MAE)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {sorted(HIGHER_IS_BETTER)}.")
    return HIGHER_IS_BETTER[metric]


def task_sort_key(task):
    """Orders task ids naturally: T2 before T10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", task) if part]


def layer_sort_key(layer):
    """Orders layer numbers ascending (the final layer last), then any other names."""
    return (0, int(layer), "") if layer.isdigit() else (1, 0, layer)


def display_order(summary):
    """The final layer first (the model's output), then the other layers in ascending order."""
    return (not summary["final_layer"], layer_sort_key(summary["layer"]))


def check_records(records):
    """Raises ValueError on missing keys, unknown metrics, inconsistent task metadata or repeated runs."""
    task_metadata = {}
    runs = set()
    for index, record in enumerate(records):
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"Record {index} lacks the key(s) {missing}; every record needs {list(RECORD_KEYS)}.")
        is_higher_better(record["metric"])
        if str(record["layer"]) == "last" or not isinstance(record["final_layer"], bool):
            raise ValueError(
                f"Record {index} ({record['task']}) names its layer {record['layer']!r} with final_layer="
                f"{record['final_layer']!r}; layers are original M2D numbers with a boolean final_layer (results "
                "from earlier resp_hf versions used 'last'; rerun `resp-hf benchmark`)."
            )
        if not np.isfinite(record["value"]):
            raise ValueError(f"Record {index} ({record['task']}, seed {record['seed']}) has a non-finite value.")
        metadata = (record["task_name"], record["metric"])
        if task_metadata.setdefault(record["task"], metadata) != metadata:
            raise ValueError(
                f"Task {record['task']!r} has records with different (task_name, metric): "
                f"{task_metadata[record['task']]} and {metadata}."
            )
        run = (record["task"], str(record["layer"]), record["seed"])
        if run in runs:
            raise ValueError(f"Task {run[0]!r}, layer {run[1]!r}, seed {run[2]!r} appears in more than one record.")
        runs.add(run)


def group_by_task_and_layer(records):
    """`{(task, layer): [records]}` in task then layer order, each list sorted by seed; layers become strings."""
    groups = {}
    for record in records:
        groups.setdefault((record["task"], str(record["layer"])), []).append(record)
    order = sorted(groups, key=lambda key: (task_sort_key(key[0]), layer_sort_key(key[1])))
    return {key: sorted(groups[key], key=lambda record: record["seed"]) for key in order}


def aggregate(records):
    """One summary per (task, layer): mean and std of `value` over the seeds present, with `n_seeds` and `seeds`.

    The std is the population standard deviation (numpy's default, ddof=0), as OPERA reports mean ± std over its
    5 runs. A leave-one-subject-out task run with a single seed reports, as OPERA does, the std over its folds
    (`spread` says which).
    """
    check_records(records)
    summaries = []
    for (task, layer), group in group_by_task_and_layer(records).items():
        values = np.array([record["value"] for record in group], dtype=np.float64)
        summary = {
            "task": task,
            "task_name": group[0]["task_name"],
            "metric": group[0]["metric"],
            "layer": layer,
            "final_layer": group[0]["final_layer"],
            "mean": float(values.mean()),
            "std": float(values.std()),
            "spread": "seeds",
            "n_seeds": len(group),
            "seeds": [record["seed"] for record in group],
        }
        if len(group) == 1 and group[0].get("fold_std") is not None:
            summary["std"], summary["spread"] = float(group[0]["fold_std"]), "folds"
        for key in OPTIONAL_KEYS:
            extra = [record.get(key) for record in group]
            if all(value is not None for value in extra):
                summary[f"{key}_mean"], summary[f"{key}_std"] = float(np.mean(extra)), float(np.std(extra))
        summaries.append(summary)
    return summaries


def row_label(model_name, summary):
    """Names the evaluated model's row: `model_name` for the final layer, `model_name (layer 6)` otherwise."""
    return model_name if summary["final_layer"] else f"{model_name} (layer {summary['layer']})"


def baselines_for(summaries, baselines):
    """The baselines of the tasks in `summaries`; raises ValueError when a task's metric differs from OPERA's."""
    metrics = {summary["task"]: summary["metric"] for summary in summaries}
    selected = [row for row in baselines if row["task"] in metrics]
    for row in selected:
        if row["metric"] != metrics[row["task"]]:
            raise ValueError(
                f"Task {row['task']!r} is scored with {metrics[row['task']]} here but with {row['metric']} in the "
                "OPERA baselines; rename the task or use the same metric to compare them."
            )
    return selected


def baselines_source(baselines):
    """The distinct citation strings of `baselines`, joined with ' | ', or None when there are none."""
    sources = list(dict.fromkeys(row["source"] for row in baselines))
    return " | ".join(sources) if sources else None


def comparison_rows(summaries, baselines, model_name):
    """Table rows `(label, {task: (mean, std)})`: the evaluated model's layers first, then each baseline model."""
    evaluated, published = {}, {}
    for summary in sorted(summaries, key=display_order):
        label = row_label(model_name, summary)
        evaluated.setdefault(label, {})[summary["task"]] = (summary["mean"], summary["std"])
    for row in baselines:
        published.setdefault(row["model"], {})[row["task"]] = (row["mean"], row["std"])
    return list(evaluated.items()) + list(published.items())


def best_per_task(rows, task_metrics):
    """`{task: best mean as shown}` over all rows: the max for AUROC and the challenge scores, the min for MAE."""
    best = {}
    for task, metric in task_metrics.items():
        means = [round(cells[task][0], metric_decimals(metric)) for _, cells in rows if task in cells]
        best[task] = max(means) if is_higher_better(metric) else min(means)
    return best


def average_cell(cells, tasks, decimals=3):
    """The mean over `tasks` of a row's means with `decimals` decimals, or '–' when a task has no value in the row."""
    if not all(task in cells for task in tasks):
        return MISSING_CELL
    return f"{np.mean([cells[task][0] for task in tasks]):.{decimals}f}"


def metric_header(metric):
    """`AUROC ↑`, `MAE ↓` or `Score (%) ↑`."""
    unit = " (%)" if metric in PERCENT_METRICS else ""
    return f"{metric}{unit} {'↑' if is_higher_better(metric) else '↓'}"


def markdown_table(rows, task_metrics):
    """The comparison as Markdown table lines: one column per task, bolded best, and per-metric averages."""
    tasks = list(task_metrics)
    average_metrics = [metric for metric in HIGHER_IS_BETTER if metric in task_metrics.values()]
    header = ["Model"] + [f"{task}<br>{metric_header(metric)}" for task, metric in task_metrics.items()]
    header += [f"Avg. {metric_header(metric)}" for metric in average_metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" :---: "] * (len(header) - 1)) + "|"]
    best = best_per_task(rows, task_metrics)
    for label, cells in rows:
        row = [label]
        for task in tasks:
            if task not in cells:
                row.append(MISSING_CELL)
                continue
            decimals = metric_decimals(task_metrics[task])
            text = format_mean_std(*cells[task], decimals)
            row.append(f"**{text}**" if round(cells[task][0], decimals) == best[task] else text)
        for metric in average_metrics:
            columns = [task for task in tasks if task_metrics[task] == metric]
            row.append(average_cell(cells, columns, metric_decimals(metric)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown_report(summaries, baselines, model_name, notes=()):
    """The full `results.md` text: title, table, task names, sources and any notes on the data."""
    task_metrics = {summary["task"]: summary["metric"] for summary in summaries}
    task_names = {summary["task"]: summary["task_name"] for summary in summaries}
    rows = comparison_rows(summaries, baselines, model_name)
    seed_counts = " or ".join(str(count) for count in sorted({summary["n_seeds"] for summary in summaries}))
    spread = "seed(s) per task"
    if any(summary["spread"] == "folds" for summary in summaries):
        spread += " (single-seed leave-one-subject-out tasks: std over the folds, as OPERA)"
    lines = [f"# Linear-probe results: {model_name}", ""]
    lines += markdown_table(rows, task_metrics)
    lines += [
        "",
        "Best mean per task in bold (highest AUROC, lowest MAE). "
        "Tasks: " + ", ".join(f"{task} = {name}" for task, name in task_names.items()) + ".",
        "",
        f"Sources: {model_name}: this evaluation, mean ± std (population, ddof=0) over {seed_counts} {spread}.",
    ]
    source = baselines_source(baselines)
    if source:
        lines[-1] += f" Baselines: {baselines_spread(baselines)}, {source}."
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def baselines_spread(baselines):
    """What OPERA's published std is taken over: 5 seeds for AUROC tasks, the folds of one run for MAE tasks."""
    metrics = {row["metric"] for row in baselines}
    spreads = []
    if "AUROC" in metrics:
        spreads.append("AUROC mean ± std over 5 seeds")
    if "MAE" in metrics:
        spreads.append("MAE mean ± std over the leave-one-subject-out folds of one run")
    return "; ".join(spreads)


def csv_rows(records, summaries):
    """`results.csv` rows: every record in task, layer, seed order, then `mean` and `std` rows per (task, layer)."""
    rows = []
    for group in group_by_task_and_layer(records).values():
        for record in group:
            row = {key: record.get(key) for key in CSV_COLUMNS}
            row["layer"] = str(row["layer"])
            rows.append(row)
    for summary in summaries:
        for statistic in ("mean", "std"):
            row = dict.fromkeys(CSV_COLUMNS, "")
            row.update({key: summary[key] for key in ("task", "task_name", "metric", "layer")})
            row.update(seed=statistic, value=summary[statistic])
            row.update({key: summary.get(f"{key}_{statistic}", "") for key in OPTIONAL_KEYS})
            rows.append(row)
    return rows


def write_csv(path, rows, columns=CSV_COLUMNS):
    """Writes `rows` with `columns` (by default the record columns); None becomes an empty cell."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    write_text_atomically(path, text.getvalue())


def json_report(summaries, baselines, model_name, notes=()):
    """The `results.json` content: per (task, layer) summaries, the baselines' citation and notes on the data."""
    keys = (
        "task",
        "task_name",
        "metric",
        "layer",
        "final_layer",
        "mean",
        "std",
        "spread",
        "n_seeds",
        "seeds",
        "mape_mean",
        "mape_std",
    )
    return {
        "model_name": model_name,
        "results": [{key: json_value(summary[key]) for key in keys if key in summary} for summary in summaries],
        "baselines_source": baselines_source(baselines),
        "notes": list(notes),
    }


def json_value(value):
    """`value`, with a NaN float (an undefined MAPE) as None: JSON has no NaN."""
    return None if isinstance(value, float) and np.isnan(value) else value


def representative_summary(summaries):
    """The summary plotted against the baselines: the final layer's, else the best layer's."""
    for summary in summaries:
        if summary["final_layer"]:
            return summary
    pick = max if is_higher_better(summaries[0]["metric"]) else min
    return pick(summaries, key=lambda summary: summary["mean"])


def new_figure():
    """A 7 x 4 inch figure drawn by the non-interactive Agg canvas, leaving pyplot's global backend untouched."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("Plotting the results needs matplotlib: pip install matplotlib") from error
    figure = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def plot_task_bars(path, summary, baselines, label):
    """Bar chart of mean ± std for the evaluated model (highlighted, first) and the task's baselines."""
    evaluated = [(label, summary["mean"], summary["std"])]
    published = [(row["model"], row["mean"], row["std"]) for row in baselines]
    title = f"{summary['task']}: {summary['task_name']}"
    plot_bars(path, evaluated, published, metric_header(summary["metric"]), title)


def plot_bars(path, evaluated, published, ylabel, title, value_format="{:.3f}"):
    """
    Bar chart of `(label, mean, std)` bars: the `evaluated` model's (highlighted, bold, first), then the `published`
    ones; each bar is labelled with its mean in `value_format`.
    """
    bars = [*evaluated, *published]
    positions = np.arange(len(bars))
    means = np.array([bar[1] for bar in bars])
    stds = np.array([bar[2] for bar in bars])
    colors = [MODEL_COLOR] * len(evaluated) + [BASELINE_COLOR] * len(published)
    figure = new_figure()
    axes = figure.subplots()
    axes.bar(positions, means, yerr=stds, color=colors, capsize=4, edgecolor="black", linewidth=0.6)
    for position, mean, std in zip(positions, means, stds):
        axes.annotate(
            value_format.format(mean),
            (position, mean + std),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    axes.set_xticks(positions, [bar[0] for bar in bars], rotation=20, ha="right", fontsize=9)
    for tick in axes.get_xticklabels()[: len(evaluated)]:
        tick.set_fontweight("bold")
    axes.set_ylim(0, float(np.max(means + stds)) * 1.15 or 1.0)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    figure.tight_layout()
    figure.savefig(path)


def plot_layer_curve(path, summaries, model_name):
    """Line plot of mean ± std (band) against the original M2D layer number; the final layer's value dashed."""
    numeric = sorted(summaries, key=lambda s: int(s["layer"]))
    layers = np.array([int(summary["layer"]) for summary in numeric])
    means = np.array([summary["mean"] for summary in numeric])
    stds = np.array([summary["std"] for summary in numeric])
    figure = new_figure()
    axes = figure.subplots()
    axes.plot(layers, means, marker="o", color=MODEL_COLOR, label=model_name)
    upper = np.minimum(means + stds, 1.0) if numeric[0]["metric"] == "AUROC" else means + stds  # AUROC <= 1
    axes.fill_between(layers, means - stds, upper, color=MODEL_COLOR, alpha=0.2, label="± std")
    for summary in summaries:
        if summary["final_layer"]:
            label = f"{model_name} (layer {summary['layer']}, final)"
            axes.axhline(summary["mean"], color="black", linestyle="--", linewidth=1, label=label)
    axes.set_xticks(layers)
    axes.set_xlabel("Layer (original M2D numbering)")
    axes.set_ylabel(metric_header(numeric[0]["metric"]))
    axes.set_title(f"{numeric[0]['task']}: {numeric[0]['task_name']} by layer")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def write_plots(plot_dir, summaries, baselines, model_name):
    """Writes `<task>.png` per task and `<task>_layers.png` for tasks run on several layers, some numeric."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    bars, curves = {}, {}
    for task in dict.fromkeys(summary["task"] for summary in summaries):
        task_summaries = [summary for summary in summaries if summary["task"] == task]
        shown = representative_summary(task_summaries)
        bars[task] = plot_dir / f"{task}.png"
        task_baselines = [row for row in baselines if row["task"] == task]
        plot_task_bars(bars[task], shown, task_baselines, row_label(model_name, shown))
        if len(task_summaries) > 1:
            curves[task] = plot_dir / f"{task}_layers.png"
            plot_layer_curve(curves[task], task_summaries, model_name)
    return bars, curves


def write_results(records, output_dir, model_name, notes=()):
    """Writes results.csv, results.md, results.json and plots/ under `output_dir`; returns the written paths.

    `notes` (strings, e.g. recordings left out of a task) are listed in results.md and results.json.

    The returned dict has `csv`, `markdown` and `json` paths, `plots` (`{task: bar chart}`) and `layer_plots`
    (`{task: per-layer curve}`, only for tasks run on several layers).
    """
    if not records:
        raise ValueError("No records to write: run at least one (task, layer, seed) probe first.")
    summaries = aggregate(records)
    baselines = baselines_for(summaries, load_baselines())
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": output_dir / "results.csv",
        "markdown": output_dir / "results.md",
        "json": output_dir / "results.json",
    }
    write_csv(paths["csv"], csv_rows(records, summaries))
    write_text_atomically(paths["markdown"], markdown_report(summaries, baselines, model_name, notes))
    report = json_report(summaries, baselines, model_name, notes)
    write_text_atomically(paths["json"], json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    paths["plots"], paths["layer_plots"] = write_plots(output_dir / "plots", summaries, baselines, model_name)
    return paths
