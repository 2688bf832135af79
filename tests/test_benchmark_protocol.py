"""The benchmark runs OPERA's per-task protocol: layer numbers, crops, epoch selection, early stopping, the cache."""

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_model
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from test_opera_safety import mmlung_checkout

from resp_hf import RespM2DFeatureExtractor
from resp_hf.cli import main as cli_main
from resp_hf.linear_probe import BenchmarkSettings, EmbeddingCache, fit_length, run_benchmark, runner
from resp_hf.linear_probe.embeddings import embed_split, parse_layers, recording_seed
from resp_hf.linear_probe.probe import EmbeddedSplit, KeepBestEpoch, ProbeData, ProbeResult, train_linear_probe
from resp_hf.opera.protocol import PROTOCOLS, get_protocol
from resp_hf.synthetic import high_band_tone, low_band_noise

RATE = 16000


# --- layer numbers --------------------------------------------------------------------------------------------------


def test_layer_names_follow_the_original_m2d_numbering():
    assert parse_layers("last", 12) == parse_layers("-1", 12) == [11]
    assert parse_layers("all", 12) == list(range(12))
    assert parse_layers("0,5,-1", 12) == [0, 5, 11]
    for old in ("12", "13", "-13"):
        with pytest.raises(ValueError, match=r"0\.\.11 for this 12-block encoder.*named them 1\.\.12 and 'last'"):
            parse_layers(old, 12)
    with pytest.raises(ValueError, match="must be 'last', 'all' or comma-separated numbers"):
        parse_layers("first", 12)


def test_embeddings_of_each_layer_are_the_original_layers(tmp_path):
    model = tiny_model(num_hidden_layers=3)
    path = tmp_path / "clip.wav"
    soundfile.write(path, low_band_noise(np.random.default_rng(0), 2.0).astype(np.float32), RATE)
    split = Dataset.from_dict({"audio": [str(path)], "label": [0]})
    embeddings = embed_split(model, split, layers=[0, 1, 2], crop="none", progress=False)
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    audio = soundfile.read(path, dtype="float32")[0]
    with torch.no_grad():
        inputs = extractor([audio], sampling_rate=RATE)
        out = model(**inputs, output_hidden_states=True)
        # the original's return_layers: each block's output before the final norm, then the last block after it
        blocks = [out.hidden_states[k] for k in (1, 2)]
        final = model.layernorm(out.hidden_states[3])
    torch.testing.assert_close(out.last_hidden_state, final)
    for layer, hidden in zip(("0", "1"), blocks):
        expected = model.pool(hidden, out.frame_mask)
        torch.testing.assert_close(torch.from_numpy(embeddings[layer]), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(embeddings["2"]), out.pooler_output, rtol=0, atol=1e-6)
    pre_norm = model.pool(out.hidden_states[3], out.frame_mask)
    assert not torch.allclose(torch.from_numpy(embeddings["2"]), pre_norm, atol=1e-3)  # no pre-LayerNorm "last"


def test_a_layer_outside_the_model_is_a_cli_error_before_embedding(golden_folder, tmp_path, capsys):
    dataset = tiny_dataset(tmp_path)
    arguments = ["--model", str(golden_folder), "--dataset", str(dataset), "--output", str(tmp_path / "o")]
    code = cli_main(["benchmark", *arguments, "--layers", "2"])
    assert code == 2
    assert "layers='2' is outside the model: layers follow the original M2D numbering: 0..1" in capsys.readouterr().err


# --- crops ------------------------------------------------------------------------------------------------------------


def test_random_crop_starts_where_evar_can_start_and_is_seeded_per_recording():
    length, excess = 10, 5
    waveform = np.arange(length + excess, dtype=np.float32)
    starts = {int(fit_length(waveform, length, "random", seed)[0]) for seed in range(300)}
    assert starts == set(range(excess))  # EVAR: np.random.randint(len - unit), so never `excess` itself
    first = recording_seed(0, {"path": "/data/a.wav"})
    assert first == recording_seed(0, "/data/a.wav") != recording_seed(0, "/data/b.wav")
    assert first != recording_seed(1, "/data/a.wav")
    assert BenchmarkSettings().applied_to(get_protocol("T7")).crop == "random"
    assert BenchmarkSettings(crop="center").applied_to(get_protocol("T7")).crop == "center"


def test_random_crops_do_not_depend_on_the_row_order(tmp_path):
    model = tiny_model()
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.wav"))
        soundfile.write(paths[-1], low_band_noise(rng, 3.0).astype(np.float32), RATE)

    def embed(audio, crop="random"):
        split = Dataset.from_dict({"audio": audio, "label": [0, 1, 0]})
        return embed_split(model, split, crop=crop, seconds=1.0, progress=False)

    forward, backward = embed(paths), embed(paths[::-1])
    np.testing.assert_allclose(forward["1"], backward["1"][::-1], atol=1e-6)
    center = embed(paths, "center")
    assert not np.allclose(forward["1"], center["1"])


# --- epoch selection and early stopping -----------------------------------------------------------------------------


def lightning_reference(values, every, patience, min_delta, greater_is_better):
    """
    Transcription of what OPERA's Lightning callbacks do with per-epoch validation values: EarlyStopping (best starts
    at +-inf; an improvement must beat it by min_delta; stop once `patience` epochs in a row did not; stop on NaN) and
    ModelCheckpoint(every_n_epochs=every, save_top_k=1) saving at epochs every, 2*every, ... when strictly better.
    Lightning runs the checkpoint callback after early stopping within an epoch. Returns (kept epoch, epochs run).
    """
    sign = 1 if greater_is_better else -1
    stop_best, wait, kept, kept_value = -np.inf, 0, None, None
    for epoch, value in enumerate(values, start=1):
        stop = False
        if patience is not None:
            if np.isnan(value):
                stop = True
            elif sign * value - min_delta > stop_best:
                stop_best, wait = sign * value, 0
            else:
                wait += 1
                stop = wait >= patience
        if epoch % every == 0 and not np.isnan(value) and (kept is None or sign * value > kept_value):
            kept, kept_value = epoch, sign * value
        if stop:
            return kept, epoch
    return kept, len(values)


class Control:
    should_training_stop = False


@pytest.mark.parametrize("every, patience, greater", [(1, None, True), (5, None, True), (3, None, True), (3, 5, False)])
def test_epoch_selection_and_early_stopping_match_operas_lightning_callbacks(every, patience, greater):
    rng = np.random.default_rng(every * 10 + (patience or 0))
    model = torch.nn.Linear(1, 1)
    for trial in range(40):
        values = np.round(rng.uniform(0, 1, 64), 2 if trial % 2 else 3)  # coarse values make ties and tiny gains
        values[rng.integers(64)] = np.nan if trial % 5 == 0 else values[0]
        min_delta = 0.001 if patience else 0
        keep = KeepBestEpoch("m", greater, checkpoint_every=every, patience=patience, min_delta=min_delta)
        control = Control()
        for epoch, value in enumerate(values, start=1):
            model.weight.data.fill_(epoch)
            keep.on_evaluate(None, None, control, metrics={"eval_m": float(value)}, model=model)
            if control.should_training_stop:
                break
        kept, ran = lightning_reference(values, every, patience, min_delta, greater)
        assert (keep.best_epoch, len(keep.history)) == (kept, ran), values
        if kept:
            assert keep.best_state["weight"].item() == kept


def separable(rng, rows, size=6):
    labels = np.arange(rows) % 2
    return rng.normal(size=(rows, size)).astype(np.float32) + 2.0 * labels[:, None], labels


def probe_data(splits, problem_type, num_labels):
    return ProbeData(*[EmbeddedSplit(*split) for split in splits], problem_type=problem_type, num_labels=num_labels)


def test_the_probe_keeps_only_epochs_opera_checkpoints_and_stops_early():
    rng = np.random.default_rng(0)
    splits = separable(rng, 40), separable(rng, 20), separable(rng, 10)
    kauh = get_protocol("T10")
    classification = probe_data(splits, "single_label_classification", 2)
    _, best_epoch, history = train_linear_probe(classification, replace(kauh, epochs=20), seed=0)
    assert best_epoch % 5 == 0 and len(history) == 20
    # validation targets run against the training ones: the validation MAE worsens from the first epoch on
    targets = [(x, sign * x[:, 0] * 3.0 + 10.0) for (x, _), sign in zip(splits, (1, -1, 1))]
    mmlung = get_protocol("T13")
    result = train_linear_probe(probe_data(targets, "regression", 1), mmlung, seed=0)
    assert np.all(np.diff(result.validation_history) > 0)
    assert len(result.validation_history) == 6 and result.best_epoch == 3  # patience 5 after epoch 1; checkpoints 3, 6
    with pytest.raises(ValueError, match="T10: 3 epoch\\(s\\) never reach OPERA's first checkpoint \\(every 5"):
        train_linear_probe(classification, replace(kauh, epochs=3), seed=0)


def test_the_runner_trains_with_the_task_protocol_object(tmp_path, monkeypatch):
    """MMlung (T13): the printed protocol object, 11% of each fold's rows to validation, one seed, ± over folds."""
    rows = [[f"./audio/b{i}.wav", f"./audio/o{i}.wav"] for i in range(10)]
    root = mmlung_checkout(tmp_path, [["Deep_Breath_file", "O_Single_file"], *rows])
    np.save(root / "feature/mmlung_eval/label.npy", np.arange(30, dtype=float).reshape(10, 3) + 1)
    (root / "datasets/mmlung/audio").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        audio = high_band_tone(rng, 0.5, RATE).astype(np.float32)
        soundfile.write(root / f"datasets/mmlung/audio/b{i}.wav", audio, RATE)
    calls = []

    def fake_probe(data, protocol, seed):
        calls.append((len(data.train.labels), len(data.validation.labels), seed, protocol))
        return ProbeResult(np.full((len(data.test.labels), 1), float(len(calls))), None, [])

    monkeypatch.setattr(runner, "train_linear_probe", fake_probe)
    settings = BenchmarkSettings(progress=False)
    records = run_benchmark(tiny_model(), tmp_path / "out", tasks=["T13"], opera_root=root, settings=settings)
    assert len(calls) == 10 and all(protocol is PROTOCOLS["T13"] for *_, protocol in calls)
    assert {(train, validation, seed) for train, validation, seed, _ in calls} == {(8, 1, 0)}  # 9 rows: 11% is 1
    fold_mae = np.abs(np.arange(1, 11) - (np.arange(10) * 3 + 1))
    assert records[0]["value"] == pytest.approx(fold_mae.mean())
    result = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert result["spread"] == "folds" and result["std"] == pytest.approx(fold_mae.std())
    assert result["layer"] == "1" and result["final_layer"] is True


# --- embedding cache --------------------------------------------------------------------------------------------------


def corrupt(path, kind):
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bit-flipped":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    else:  # a well-formed file with the wrong rows or NaN, as an older or foreign writer could leave
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        for name in arrays:
            if name != "__sha256__":
                arrays[name] = arrays[name][:-1] if kind == "short" else np.full_like(arrays[name], np.nan)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)


@pytest.mark.parametrize("kind", ["truncated", "empty", "bit-flipped", "short", "nan"])
def test_a_corrupt_cache_entry_is_recomputed_with_a_warning(tmp_path, caplog, kind):
    cache = EmbeddingCache(tmp_path / "cache")
    good = {"1": np.arange(12, dtype=np.float32).reshape(3, 4)}
    cache.save({"k": 1}, good)
    path = cache.path({"k": 1})
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    np.testing.assert_array_equal(cache.load({"k": 1}, ["1"], 3)["1"], good["1"])
    corrupt(path, kind)
    with caplog.at_level(logging.WARNING):
        assert cache.load({"k": 1}, ["1"], 3) is None
    assert f"Embedding cache file {path} is corrupt" in caplog.text


def test_a_benchmark_run_recomputes_a_corrupt_cache_entry(tmp_path, caplog):
    dataset = tiny_dataset(tmp_path)
    settings = BenchmarkSettings(seeds=(0,), epochs=2, seconds=0.5, progress=False)
    first = run_benchmark(tiny_model(), tmp_path / "a", datasets=[dataset], settings=settings, cache_dir=tmp_path / "c")
    for entry in (tmp_path / "c").iterdir():
        corrupt(entry, "nan")
    with caplog.at_level(logging.WARNING):
        again = run_benchmark(
            tiny_model(), tmp_path / "b", datasets=[dataset], settings=settings, cache_dir=tmp_path / "c"
        )
    assert "is corrupt" in caplog.text and [r["value"] for r in again] == [r["value"] for r in first]


def tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    features = Features({"audio": Value("string"), "label": ClassLabel(num_classes=2)})
    for split, count in (("train", 8), ("validation", 4), ("test", 4)):
        paths = []
        for i in range(count):
            paths.append(str(tmp_path / f"{split}{i}.wav"))
            maker = low_band_noise if i % 2 == 0 else high_band_tone
            soundfile.write(paths[-1], maker(rng, 0.5, RATE).astype(np.float32), RATE)
        splits[split] = Dataset.from_dict({"audio": paths, "label": [i % 2 for i in range(count)]}, features=features)
    DatasetDict(splits).save_to_disk(str(tmp_path / "dataset"))
    return tmp_path / "dataset"


# --- output folders ---------------------------------------------------------------------------------------------------


def test_benchmark_refuses_an_earlier_runs_folder_unless_overwrite(tmp_path):
    dataset = tiny_dataset(tmp_path)
    settings = BenchmarkSettings(seeds=(0,), epochs=2, seconds=0.5, progress=False)
    output = tmp_path / "out"
    run_benchmark(tiny_model(), output, datasets=[dataset], settings=settings)
    stale = output / "predictions" / "stale.npz"
    stale.write_bytes(b"old")
    with pytest.raises(
        ValueError, match=r"already holds plots, predictions, results.csv.*: pass overwrite=True \(--overwrite\) to"
    ):
        run_benchmark(tiny_model(), output, datasets=[dataset], settings=settings)
    settings.overwrite = True
    run_benchmark(tiny_model(), output, datasets=[dataset], settings=settings)
    assert not stale.exists() and (output / "results.json").is_file()
    only_cache = tmp_path / "resumed"
    shutil.copytree(output / "embedding_cache", only_cache / "embedding_cache")
    settings.overwrite = False
    run_benchmark(tiny_model(), only_cache, datasets=[dataset], settings=settings)  # a cache alone is reused
    assert not [p for p in output.rglob("*.partial*")]


def test_cards_refuse_results_with_the_old_layer_names(tmp_path, golden_folder):
    from resp_hf.cards import add_benchmark_results

    folder = tmp_path / "model"
    shutil.copytree(golden_folder, folder)
    old = {"results": [{"task": "T7", "task_name": "icbhi_copd", "metric": "AUROC", "layer": "last", "mean": 0.8}]}
    (tmp_path / "results.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="names layers the old way .*rerun `resp-hf benchmark`"):
        add_benchmark_results(folder, tmp_path / "results.json")
