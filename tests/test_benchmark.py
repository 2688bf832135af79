import csv
import io
import json
import logging
import shutil

import numpy as np
import pytest
import soundfile
import torch
from conftest import OPERA, tiny_model
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value
from huggingface_hub import ModelCard
from sklearn.metrics import roc_auc_score

from resp_hf import RespM2DFeatureExtractor
from resp_hf.cli import main as cli_main
from resp_hf.linear_probe import BenchmarkSettings, fit_length, run_benchmark
from resp_hf.linear_probe.embeddings import embed_split, split_fingerprint
from resp_hf.linear_probe.probe import KeepBestEpoch, LinearProbe, LinearProbeConfig
from resp_hf.linear_probe.runner import Embedder
from resp_hf.synthetic import high_band_tone, low_band_noise

RATE = 16000
PER_CLASS = {"train": 48, "validation": 16, "test": 16}


def write_clip(folder, name, audio):
    path = folder / f"{name}.wav"
    soundfile.write(path, (0.3 * audio / np.abs(audio).max()).astype(np.float32), RATE)
    return str(path)


def spectral_dataset(folder, classes=2, shuffle_labels=False, seed=0):
    """Clips whose classes differ by spectrum: low-band noise, 2-4 kHz tones, (6-7 kHz tones)."""
    makers = [low_band_noise, high_band_tone, lambda rng, s, r: high_band_tone(rng, s, r, band=(6000.0, 7000.0))]
    rng = np.random.default_rng(seed)
    splits = {}
    for split, per_class in PER_CLASS.items():
        paths, labels = [], []
        for label in range(classes):
            for i in range(per_class):
                paths.append(
                    write_clip(folder, f"{split}_{label}_{i}", makers[label](rng, rng.uniform(0.5, 1.5), RATE))
                )
                labels.append(label)
        if shuffle_labels:
            labels = rng.permutation(labels).tolist()
        features = Features(
            {"audio": Value("string"), "label": ClassLabel(num_classes=classes), "path": Value("string")}
        )
        splits[split] = Dataset.from_dict({"audio": paths, "label": labels, "path": paths}, features=features)
    return DatasetDict(splits)


@pytest.fixture(scope="module")
def binary_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spectral")
    dataset = spectral_dataset(folder)
    dataset.save_to_disk(str(folder / "dataset"))
    return folder / "dataset"


def read_results(output):
    with open(output / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_separable_classes_reach_high_auroc_and_results_match_saved_predictions(binary_dataset, tmp_path):
    records = run_benchmark(
        tiny_model(), tmp_path, datasets=[binary_dataset], settings=BenchmarkSettings(progress=False)
    )
    values = [r["value"] for r in records]
    assert len(values) == 5 and np.mean(values) > 0.9
    for record in records:
        saved = np.load(tmp_path / "predictions" / f"dataset_layer-1_seed-{record['seed']}.npz")
        probabilities = torch.softmax(torch.from_numpy(saved["logits"]), -1)[:, 1].numpy()
        assert record["value"] == pytest.approx(roc_auc_score(saved["labels"], probabilities), abs=1e-12)
        assert 1 <= record["best_epoch"] <= 64
    rows = read_results(tmp_path)
    mean_row = next(row for row in rows if row["seed"] == "mean")
    std_row = next(row for row in rows if row["seed"] == "std")
    assert float(mean_row["value"]) == pytest.approx(np.mean(values)) and float(std_row["value"]) == pytest.approx(
        np.std(values)
    )
    assert {"results.md", "results.json"} <= {p.name for p in tmp_path.iterdir()} and (
        tmp_path / "plots" / "dataset.png"
    ).is_file()


def test_shuffled_labels_give_chance_auroc_and_mean_std_use_the_seeds_run(tmp_path):
    dataset = spectral_dataset(tmp_path, shuffle_labels=True, seed=3)
    dataset.save_to_disk(str(tmp_path / "shuffled"))
    records = run_benchmark(
        tiny_model(),
        tmp_path / "out",
        datasets=[tmp_path / "shuffled"],
        settings=BenchmarkSettings(seeds=(0, 2), progress=False),
    )
    values = [r["value"] for r in records]
    assert [r["seed"] for r in records] == [0, 2]
    assert abs(np.mean(values) - 0.5) < 0.2
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert result["n_seeds"] == 2 and result["mean"] == pytest.approx(np.mean(values))
    assert result["std"] == pytest.approx(np.std(values))


def test_multiclass_auroc_is_macro_one_vs_rest_on_saved_predictions(tmp_path):
    dataset = spectral_dataset(tmp_path, classes=3)
    dataset.save_to_disk(str(tmp_path / "three"))
    records = run_benchmark(
        tiny_model(),
        tmp_path / "out",
        datasets=[tmp_path / "three"],
        settings=BenchmarkSettings(seeds=(0,), epochs=8, progress=False),
    )
    saved = np.load(tmp_path / "out" / "predictions" / "three_layer-1_seed-0.npz")
    probabilities = torch.softmax(torch.from_numpy(saved["logits"]), -1).numpy()
    expected = roc_auc_score(saved["labels"], probabilities, multi_class="ovr", average="macro")
    assert records[0]["value"] == pytest.approx(expected, abs=1e-12)


def test_embedding_cache_skips_the_encoder_and_follows_model_and_settings(binary_dataset, tmp_path):
    model = tiny_model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    settings = BenchmarkSettings(seeds=(0,), epochs=2, progress=False)
    run_benchmark(model, tmp_path / "first", datasets=[binary_dataset], settings=settings, cache_dir=tmp_path / "cache")
    assert len(calls) > 0
    calls.clear()
    run_benchmark(
        model, tmp_path / "second", datasets=[binary_dataset], settings=settings, cache_dir=tmp_path / "cache"
    )
    assert calls == []
    with torch.no_grad():
        model.encoder.layer[0].mlp.fc1.bias.add_(0.01)
    run_benchmark(model, tmp_path / "third", datasets=[binary_dataset], settings=settings, cache_dir=tmp_path / "cache")
    assert len(calls) > 0
    calls.clear()
    cropped = BenchmarkSettings(seeds=(0,), epochs=2, progress=False, crop="none")
    run_benchmark(model, tmp_path / "fourth", datasets=[binary_dataset], settings=cropped, cache_dir=tmp_path / "cache")
    assert len(calls) > 0


def wav_bytes(audio):
    buffer = io.BytesIO()
    soundfile.write(buffer, audio.astype(np.float32), RATE, format="WAV")
    return buffer.getvalue()


def hub_style_split(amplitude):
    """Audio held as bytes under file names that do not exist here, as in a dataset loaded from the Hub."""
    rng = np.random.default_rng(0)
    audio = [{"bytes": wav_bytes(amplitude * low_band_noise(rng, 1.0)), "path": f"clip{i}.wav"} for i in range(3)]
    features = Features({"audio": {"bytes": Value("binary"), "path": Value("string")}, "label": Value("int64")})
    split = Dataset.from_dict({"audio": audio, "label": [0, 1, 0]}, features=features)
    return split.cast_column("audio", Audio(sampling_rate=RATE))


def test_embedding_cache_follows_the_audio_bytes_not_only_the_names(tmp_path):
    quiet, loud = hub_style_split(0.1), hub_style_split(0.9)
    assert split_fingerprint(quiet) != split_fingerprint(loud)
    assert split_fingerprint(quiet) == split_fingerprint(hub_style_split(0.1))
    model = tiny_model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    embed = Embedder(model, BenchmarkSettings(progress=False), tmp_path / "cache")
    first = embed(quiet, "random", 1.0)["1"]  # the tiny encoder's final layer, original M2D numbering
    calls.clear()
    second = embed(loud, "random", 1.0)["1"]
    assert len(calls) > 0 and not np.allclose(first, second)
    calls.clear()
    np.testing.assert_array_equal(embed(quiet, "random", 1.0)["1"], first)
    assert calls == []


def test_ten_second_windows_pad_crop_and_random_crops_are_reproducible():
    length = 10 * RATE
    short = np.ones(3 * RATE, dtype=np.float32)
    padded = fit_length(short, length, "center", seed=0)
    assert padded.shape == (length,) and padded[: 3 * RATE].all() and not padded[3 * RATE :].any()
    long = np.arange(25 * RATE, dtype=np.float32)
    center = fit_length(long, length, "center", seed=0)
    assert center.shape == (length,) and center[0] == (15 * RATE) // 2
    first, again = fit_length(long, length, "random", [0, 7]), fit_length(long, length, "random", [0, 7])
    other = fit_length(long, length, "random", [0, 8])
    assert np.array_equal(first, again) and not np.array_equal(first, other) and first.shape == (length,)
    assert fit_length(long, length, "none", seed=0) is long
    with pytest.raises(ValueError, match="crop='middle'"):
        fit_length(long, length, "middle", seed=0)


def test_embeddings_are_the_model_on_the_fitted_windows(tmp_path):
    model = tiny_model()
    long_audio = low_band_noise(np.random.default_rng(0), 12.0)
    paths = [write_clip(tmp_path, "long", long_audio), write_clip(tmp_path, "short", long_audio[: 2 * RATE])]
    split = Dataset.from_dict({"audio": paths, "label": [0, 1]})
    embeddings = embed_split(model, split, crop="center", progress=False)["1"]
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    stored = [soundfile.read(path, dtype="float32")[0] for path in paths]
    windows = [fit_length(audio, 10 * RATE, "center", seed=0) for audio in stored]
    with torch.no_grad():
        expected = model(**extractor(windows, sampling_rate=RATE)).pooler_output
    torch.testing.assert_close(torch.from_numpy(embeddings), expected, atol=1e-5, rtol=0)


def test_the_best_validation_epoch_is_kept_first_on_ties():
    model = torch.nn.Linear(1, 1)
    keep = KeepBestEpoch("auroc", greater_is_better=True)
    for epoch, value in enumerate([0.5, 0.7, float("nan"), 0.7, 0.6], start=1):
        model.weight.data.fill_(epoch)
        keep.on_evaluate(None, None, None, metrics={"eval_auroc": value}, model=model)
    assert keep.best_epoch == 2 and keep.best_state["weight"].item() == 2.0
    lower = KeepBestEpoch("mae", greater_is_better=False)
    for value in (3.0, 1.0, 2.0):
        lower.on_evaluate(None, None, None, metrics={"eval_mae": value}, model=model)
    assert lower.best_epoch == 2


def test_the_probe_starts_and_is_penalized_like_operas_linear_head():
    torch.manual_seed(0)
    probe = LinearProbe(LinearProbeConfig(input_size=3840, num_labels=2, l2_strength=0.5))
    assert probe.linear.weight.std().item() == pytest.approx(0.01, rel=0.05) and not probe.linear.bias.any()
    with torch.no_grad():
        probe.linear.bias.fill_(2.0)
    features, labels = torch.randn(4, 3840), torch.tensor([0, 1, 1, 0])
    output = probe(features, labels=labels)
    squares = probe.linear.weight.square().sum() + probe.linear.bias.square().sum()
    expected = torch.nn.functional.cross_entropy(output.logits, labels) + 0.5 * squares
    torch.testing.assert_close(output.loss, expected)

    config = LinearProbeConfig(
        input_size=8, num_labels=1, l2_strength=0.1, target_mean=15.0, target_std=4.0, problem_type="regression"
    )
    regression = LinearProbe(config)
    features, targets = torch.randn(5, 8), torch.tensor([12.0, 14.0, 15.0, 18.0, 20.0])
    output = regression(features, labels=targets)
    torch.testing.assert_close(output.logits, regression.linear(features) * 4.0 + 15.0)
    squares = regression.linear.weight.square().sum() + regression.linear.bias.square().sum()
    expected = torch.nn.functional.mse_loss(output.logits[:, 0], targets) + 0.1 * squares  # in breaths per minute
    torch.testing.assert_close(output.loss, expected)


def test_leave_one_subject_out_regression(tmp_path):
    rng = np.random.default_rng(0)
    paths, targets, folds = [], [], []
    for subject in range(4):
        for i in range(6):
            frequency = rng.uniform(1000, 5000)
            paths.append(write_clip(tmp_path, f"{subject}_{i}", high_band_tone(rng, 1.0, RATE, (frequency, frequency))))
            targets.append(frequency / 1000)
            folds.append(str(subject) if subject < 3 else None)
    DatasetDict(
        {"train": Dataset.from_dict({"audio": paths, "label": targets, "fold": folds, "path": paths})}
    ).save_to_disk(str(tmp_path / "rates"))
    records = run_benchmark(
        tiny_model(),
        tmp_path / "out",
        datasets=[tmp_path / "rates"],
        settings=BenchmarkSettings(seeds=(0,), epochs=4, progress=False),
    )
    assert records[0]["metric"] == "MAE" and records[0]["best_epoch"] is None
    saved = np.load(tmp_path / "out" / "predictions" / "rates_layer-1_seed-0.npz")
    assert len(saved["fold_mae"]) == 3 and records[0]["value"] == pytest.approx(saved["fold_mae"].mean())
    assert records[0]["mape"] == pytest.approx(saved["fold_mape"].mean())
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert result["mape_mean"] == pytest.approx(records[0]["mape"]) and result["mape_std"] == 0.0
    rows = read_results(tmp_path / "out")
    assert float(rows[0]["mape"]) == pytest.approx(records[0]["mape"])
    tested = saved["folds"] != ""
    assert np.isfinite(saved["predictions"][tested]).all() and np.isnan(saved["predictions"][~tested]).all()


def test_split_regression_keeps_the_best_validation_epoch_and_reports_test_mae(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", 24), ("validation", 8), ("test", 8)):
        frequencies = rng.uniform(1000, 5000, count)
        paths = [
            write_clip(tmp_path, f"{split}_{i}", high_band_tone(rng, 1.0, RATE, (f, f)))
            for i, f in enumerate(frequencies)
        ]
        splits[split] = Dataset.from_dict({"audio": paths, "label": (frequencies / 1000).tolist(), "path": paths})
    DatasetDict(splits).save_to_disk(str(tmp_path / "pitch"))
    records = run_benchmark(
        tiny_model(),
        tmp_path / "out",
        datasets=[tmp_path / "pitch"],
        settings=BenchmarkSettings(seeds=(0,), epochs=4, progress=False),
    )
    saved = np.load(tmp_path / "out" / "predictions" / "pitch_layer-1_seed-0.npz")
    errors = saved["logits"][:, 0] - saved["labels"]
    assert records[0]["metric"] == "MAE" and 1 <= records[0]["best_epoch"] <= 4
    assert records[0]["value"] == pytest.approx(np.abs(errors).mean(), rel=1e-5)
    assert records[0]["mape"] == pytest.approx(np.abs(errors / saved["labels"]).mean(), rel=1e-5)
    assert (records[0]["n_train"], records[0]["n_validation"], records[0]["n_test"]) == (24, 8, 8)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_class_missing_from_validation_or_test_stops_before_any_embedding(tmp_path, split):
    features = Features({"audio": Value("string"), "label": ClassLabel(names=["low", "mid", "high"])})
    labels = {"train": [0, 1, 2, 0, 1, 2], "validation": [0, 1, 2], "test": [0, 1, 2]}
    labels[split] = [0, 0, 1]
    dataset = DatasetDict(
        {
            name: Dataset.from_dict({"audio": [f"{name}{i}.wav" for i in range(len(y))], "label": y}, features=features)
            for name, y in labels.items()
        }
    )
    dataset.save_to_disk(str(tmp_path / "three"))
    model = tiny_model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(
        ValueError, match=f"three: the {split} split lacks the class\\(es\\) high \\(3 rows\\), so AUROC is undefined"
    ):
        run_benchmark(
            model, tmp_path / "out", datasets=[tmp_path / "three"], settings=BenchmarkSettings(progress=False)
        )
    assert calls == []


def test_a_bad_later_dataset_stops_the_run_before_anything_is_embedded(tmp_path):
    good = spectral_dataset(tmp_path, classes=2)
    good.save_to_disk(str(tmp_path / "good"))
    DatasetDict({"train": good["train"], "validation": good["validation"]}).save_to_disk(str(tmp_path / "bad"))
    model = tiny_model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="bad: the test split is missing or empty"):
        run_benchmark(model, tmp_path / "out", datasets=[tmp_path / "good", tmp_path / "bad"])
    assert calls == []


def test_integer_labels_that_are_not_a_class_label_are_an_error(tmp_path):
    rows = {"audio": ["unused.wav"] * 4, "label": [0, 1, 0, 1]}
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ids"))
    with pytest.raises(ValueError, match=r"ids: the 'label' column is Value\('int64'\); cast it to ClassLabel"):
        run_benchmark(tiny_model(), tmp_path / "out", datasets=[tmp_path / "ids"])


def test_a_train_split_too_small_to_carve_validation_from_is_a_clear_error(tmp_path):
    features = Features({"audio": Value("string"), "label": ClassLabel(names=["no", "yes"])})
    rows = {name: {"audio": [f"{name}{i}.wav" for i in range(3)], "label": [0, 0, 1]} for name in ("train", "test")}
    splits = {name: Dataset.from_dict(rows[name], features=features) for name in rows}
    DatasetDict(splits).save_to_disk(str(tmp_path / "tiny"))
    with pytest.raises(ValueError, match="tiny: cannot carve a 20% validation split out of its 3 train rows"):
        run_benchmark(tiny_model(), tmp_path / "out", datasets=[tmp_path / "tiny"])


def saved_splits(folder, labels, feature, audio=None):
    """A DatasetDict saved in `folder` with `labels` per split and distinct (unread) audio names unless given."""
    splits = {}
    for name, values in labels.items():
        paths = audio[name] if audio else [f"{name}{i}.wav" for i in range(len(values))]
        splits[name] = Dataset.from_dict(
            {"audio": paths, "label": values}, features=Features({"audio": Value("string"), "label": feature[name]})
        )
    DatasetDict(splits).save_to_disk(str(folder))
    return folder


def test_splits_that_number_the_classes_differently_are_refused(tmp_path):
    labels = {"train": [0, 1, 0, 1], "validation": [0, 1], "test": [1, 0]}
    order = {"train": ClassLabel(names=["low", "high"]), "validation": ClassLabel(names=["low", "high"])}
    folder = saved_splits(tmp_path / "swapped", labels, {**order, "test": ClassLabel(names=["high", "low"])})
    with pytest.raises(ValueError, match="swapped: the test split's 'label' feature .* differs from the train split's"):
        run_benchmark(tiny_model(), tmp_path / "out", datasets=[folder])


@pytest.mark.parametrize(
    "feature, bad, shown",
    [(ClassLabel(names=["no", "yes"]), -1, "-1"), (Value("float32"), float("nan"), "nan")],
)
def test_rows_without_a_valid_label_are_named_before_any_embedding(tmp_path, feature, bad, shown):
    labels = {"train": [0, 1, 0, 1], "validation": [0, 1], "test": [1, bad, 0]}
    folder = saved_splits(tmp_path / "unlabelled", labels, dict.fromkeys(labels, feature))
    model = tiny_model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(
        ValueError, match=f"unlabelled: the test split has a row without a valid label \\(row 1: {shown}\\)"
    ):
        run_benchmark(model, tmp_path / "out", datasets=[folder])
    assert calls == []


@pytest.mark.parametrize("kind", ["file", "segment", "bytes"])
def test_the_same_audio_in_two_splits_is_refused(tmp_path, kind):
    labels = {"train": [0, 1, 0, 1], "validation": [0, 1], "test": [1, 0]}
    audio = {name: [f"{name}{i}.wav" for i in range(len(y))] for name, y in labels.items()}
    audio["test"][1] = "./" + audio["train"][2]  # the same file, spelt otherwise
    rows = {name: Dataset.from_dict({"audio": paths, "label": labels[name]}) for name, paths in audio.items()}
    if kind == "segment":
        rows = {
            name: Dataset.from_dict(
                {
                    "audio": [
                        {"path": "rec.wav", "start": 10.0 * k + i, "end": 10.0 * k + i + 0.5} for i in range(len(y))
                    ],
                    "label": y,
                }
            )
            for k, (name, y) in enumerate(labels.items())
        }
        rows["test"] = Dataset.from_dict(
            {"audio": [{"path": "rec.wav", "start": 8.0, "end": 8.5}, rows["train"][3]["audio"]], "label": [1, 0]}
        )
    if kind == "bytes":
        clips = {
            name: [{"bytes": f"{name}{i}".encode(), "path": None} for i in range(len(y))] for name, y in labels.items()
        }
        clips["test"][0] = {"bytes": b"validation1", "path": None}
        rows = {name: Dataset.from_dict({"audio": value, "label": labels[name]}) for name, value in clips.items()}
    classes = ClassLabel(names=["no", "yes"])
    DatasetDict({name: split.cast_column("label", classes) for name, split in rows.items()}).save_to_disk(
        str(tmp_path / "leaky")
    )
    with pytest.raises(ValueError, match="leaky: the (train|validation) and test splits hold the same audio"):
        run_benchmark(tiny_model(), tmp_path / "out", datasets=[tmp_path / "leaky"])


def test_a_failed_run_leaves_only_its_embedding_cache_and_can_be_run_again(binary_dataset, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("resp_hf.linear_probe.runner.train_linear_probe", fail)
    settings = BenchmarkSettings(seeds=(0,), epochs=1, progress=False)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_benchmark(tiny_model(), tmp_path / "out", datasets=[binary_dataset], settings=settings)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["embedding_cache"]
    monkeypatch.undo()
    run_benchmark(tiny_model(), tmp_path / "out", datasets=[binary_dataset], settings=settings)
    assert (tmp_path / "out" / "results.csv").is_file()


def test_folds_are_for_regression_only(tmp_path):
    features = Features({"audio": Value("string"), "label": ClassLabel(names=["no", "yes"]), "fold": Value("string")})
    rows = {"audio": ["unused.wav"] * 4, "label": [0, 1, 0, 1], "fold": ["a", "a", "b", "b"]}
    DatasetDict({"train": Dataset.from_dict(rows, features=features)}).save_to_disk(str(tmp_path / "folded"))
    with pytest.raises(ValueError, match="folded: leave-one-subject-out folds .* are for regression tasks only"):
        run_benchmark(tiny_model(), tmp_path / "out", datasets=[tmp_path / "folded"])


def test_allow_missing_warns_and_notes_what_it_left_out(tmp_path, caplog):
    root = tmp_path / "OPERA"
    shutil.copytree(OPERA, root)
    paths, splits = (
        np.load(root / "feature/kauh_eval" / f"{name}.npy").tolist()
        for name in ("sound_dir_loc_subset", "train_test_split")
    )
    silence = np.zeros(RATE // 10, dtype=np.float32)
    for path in paths:
        if not (root / path).exists():
            soundfile.write(root / path, silence, RATE)
    gone = [path for path, split in zip(paths, splits) if split != "train"][:3]
    for path in gone:
        (root / path).unlink()
    settings = BenchmarkSettings(seeds=(0,), epochs=5, seconds=1.0, allow_missing=True, progress=False)
    with caplog.at_level(logging.WARNING):
        run_benchmark(tiny_model(), tmp_path / "out", tasks=["T10"], opera_root=root, settings=settings)
    note = f"T10: left out 3 of {len(paths)} recordings, missing or unreadable (test 3)."
    assert note in caplog.messages
    assert json.loads((tmp_path / "out" / "results.json").read_text())["notes"] == [note]
    assert f"- {note}" in (tmp_path / "out" / "results.md").read_text()


def test_opera_tasks_with_a_single_class_split_stop_with_a_clear_message(golden_folder, tmp_path, capsys):
    code = cli_main(
        [
            "benchmark",
            "--model",
            str(golden_folder),
            "--tasks",
            "T10",
            "--opera-root",
            str(OPERA),
            "--allow-missing",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "T10: the train split has a single class (asthma_or_copd; 5 rows)" in capsys.readouterr().err
    code = cli_main(
        [
            "benchmark",
            "--model",
            str(golden_folder),
            "--tasks",
            "T7",
            "--opera-root",
            str(OPERA),
            "--allow-missing",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 2 and "T7: the train split is missing or empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--tasks", "T7"], "OPERA tasks need --opera-root"),
        (["--tasks", "T42", "--opera-root", str(OPERA)], "error: Unknown OPERA task 'T42'; known: T1"),
        (["--tasks", "T7", "--opera-root", "/nonexistent/OPERA"], "OPERA root not found: /nonexistent/OPERA"),
    ],
)
def test_benchmark_arguments_are_checked_before_the_model_loads(tmp_path, capsys, arguments, message):
    absent_model = tmp_path / "no-model-here"
    code = cli_main(["benchmark", "--model", str(absent_model), "--output", str(tmp_path / "out"), *arguments])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--epochs", "0", "argument --epochs: must be at least 1, got 0"),
        ("--batch-size", "0", "argument --batch-size: must be at least 1, got 0"),
        ("--seeds", "0,0", "argument --seeds: the seeds must be distinct, got 0,0"),
        ("--seeds", "0,x", "argument --seeds: invalid distinct_seeds value: '0,x'"),
    ],
)
def test_benchmark_rejects_unusable_numbers_as_usage_errors(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["benchmark", "--model", "m", "--dataset", "d", "--output", str(tmp_path), option, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "settings, message",
    [
        (BenchmarkSettings(epochs=0), "epochs must be at least 1, got 0"),
        (BenchmarkSettings(batch_size=0), "batch_size must be at least 1, got 0"),
        (BenchmarkSettings(seeds=(1, 1)), r"seeds must be distinct and at least one, got \[1, 1\]"),
        (BenchmarkSettings(seeds=()), r"seeds must be distinct and at least one, got \[\]"),
    ],
)
def test_run_benchmark_checks_its_settings_first(binary_dataset, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(tmp_path / "no-model-here", tmp_path / "out", datasets=[binary_dataset], settings=settings)
    assert not (tmp_path / "out").exists()


def test_golden_checkpoint_end_to_end_with_layers_and_card(golden_folder, binary_dataset, tmp_path, capsys):
    model_folder = tmp_path / "model"
    shutil.copytree(golden_folder, model_folder)
    code = cli_main(
        [
            "benchmark",
            "--model",
            str(model_folder),
            "--dataset",
            str(binary_dataset),
            "--output",
            str(tmp_path / "out"),
            "--layers",
            "all",
            "--seeds",
            "0,1",
            "--epochs",
            "4",
        ]
    )
    assert code == 0
    assert "| Model |" in capsys.readouterr().out
    rows = read_results(tmp_path / "out")
    assert {row["layer"] for row in rows} == {"0", "1"}  # the golden encoder's 2 blocks, original M2D numbering
    assert (tmp_path / "out" / "plots" / "dataset_layers.png").is_file()
    assert cli_main(["card", str(model_folder), "--results", str(tmp_path / "out" / "results.json")]) == 0
    card = ModelCard((model_folder / "README.md").read_text())
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    last = next(r for r in results if r["final_layer"])
    entry = card.data.to_dict()["model-index"][0]["results"][0]
    assert entry["metrics"][0] == {"type": "roc_auc", "value": round(last["mean"], 4)}
    assert entry["dataset"] == {"name": "dataset", "type": "dataset", "split": "test"}  # not labelled as OPERA
    assert f"{last['mean']:.3f} ± {last['std']:.3f}" in card.text and "Not evaluated by" not in card.text
    assert "baselines: None" not in card.text
    assert "| AUROC | 1 (final) |" in card.text and "| AUROC | 0 |" in card.text  # original M2D layer numbers


def test_benchmark_example_runs(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    result = subprocess.run(
        [sys.executable, REPO_ROOT / "examples" / "benchmark_synthetic.py", tmp_path, "--seeds", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| encoder |" in result.stdout
    assert (tmp_path / "results" / "plots" / "breath_vs_wheeze.png").is_file()


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "1e9"])
def test_a_clip_length_no_run_can_use_is_refused_before_anything_runs(tmp_path, capsys, seconds):
    output = tmp_path / "out"
    arguments = ["benchmark", "--model", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "no-dataset")]
    assert cli_main([*arguments, "--output", str(output), "--seconds", seconds]) == 2
    assert capsys.readouterr().err.strip() == (
        f"resp-hf benchmark: error: seconds must be a number of seconds in (0, 3600], got {float(seconds)!r}."
    )
    assert not output.exists()


@pytest.mark.parametrize("where", ["the model folder", "a file"])
def test_an_embedding_cache_in_the_model_folder_or_on_a_file_is_refused_before_anything_runs(tmp_path, where):
    model_folder = tmp_path / "model"
    tiny_model().save_pretrained(model_folder)
    before = sorted(path.name for path in model_folder.iterdir())
    cache = model_folder / "cache" if where == "the model folder" else model_folder / "config.json"
    problem = (
        f"lies inside the input folder {model_folder}" if where == "the model folder" else "is a file; pass a folder"
    )
    with pytest.raises(ValueError, match=f"^The cache_dir {cache} {problem}"):
        run_benchmark(model_folder, tmp_path / "out", datasets=[tmp_path / "no-dataset"], cache_dir=cache)
    assert sorted(path.name for path in model_folder.iterdir()) == before and not (tmp_path / "out").exists()
