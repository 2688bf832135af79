"""One batched embedding loop: `RespM2DModel.embed` and the linear-probe benchmark's cache give the same embeddings."""

import pytest
import soundfile
import torch
from conftest import noise, tiny_model
from datasets import Dataset

from resp_hf import RespM2DFeatureExtractor
from resp_hf.linear_probe import BenchmarkSettings, fit_length
from resp_hf.linear_probe.embeddings import recording_seed
from resp_hf.linear_probe.runner import Embedder
from resp_hf.models.resp_m2d.modeling_resp_m2d import embed_clips

RATE = 16000


@pytest.mark.parametrize("crop", ["random", "none"])
def test_the_benchmark_cache_holds_embed_of_the_cropped_clips_at_every_layer(tmp_path, crop):
    model = tiny_model(num_hidden_layers=3)
    paths = []
    for seed, seconds in enumerate((0.4, 1.7, 3.0)):  # padded, and cropped at seeded random starts
        paths.append(str(tmp_path / f"clip{seed}.wav"))
        soundfile.write(paths[-1], noise(seconds, seed=seed), RATE)
    split = Dataset.from_dict({"audio": paths, "label": [0, 1, 0]})
    settings = BenchmarkSettings(layers="all", crop_seed=3, progress=False)
    Embedder(model, settings, tmp_path / "cache")(split, crop, 1.0)  # computes and writes the cache
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    cached = Embedder(model, settings, tmp_path / "cache")(split, crop, 1.0)
    assert calls == [] and sorted(cached) == ["0", "1", "2"]  # read back from the cache files
    clips = [
        fit_length(soundfile.read(path, dtype="float32")[0], RATE, crop, recording_seed(3, path)) for path in paths
    ]
    for layer in (0, 1, 2):
        expected = model.embed(clips, sampling_rate=RATE, layer=layer, progress=False)
        torch.testing.assert_close(torch.from_numpy(cached[str(layer)]), expected, atol=1e-6, rtol=0)
    last = model.embed(clips, sampling_rate=RATE, progress=False)
    torch.testing.assert_close(model.embed(clips, sampling_rate=RATE, layer=-1, progress=False), last, atol=0, rtol=0)
    assert not torch.allclose(last, model.embed(clips, sampling_rate=RATE, layer=1, progress=False), atol=1e-3)


def test_layers_are_checked_before_any_clip_is_loaded():
    model = tiny_model(num_hidden_layers=2)
    loaded = []

    def load_clip(index):
        loaded.append(index)
        return noise(0.5, seed=index)

    with pytest.raises(ValueError, match=r"layers=\[0, 2\]: this encoder has layers 0\.\.1 \(or -2\.\.-1\)"):
        embed_clips(model, load_clip, 2, RespM2DFeatureExtractor.from_model_config(model.config), layers=[0, 2])
    with pytest.raises(ValueError, match=r"layers=\[-3\]"):
        model.embed(noise(0.5), sampling_rate=RATE, layer=-3)
    assert loaded == []


def test_several_layers_come_from_one_forward_pass_per_batch_in_input_order():
    model = tiny_model(num_hidden_layers=3)
    clips = [noise(seconds, seed=seed) for seed, seconds in enumerate((2.0, 0.3, 1.1, 0.6, 1.5))]
    passes = []
    model.register_forward_hook(lambda *args: passes.append(1))
    durations = [len(clip) for clip in clips]
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    layers = embed_clips(
        model, clips.__getitem__, len(clips), extractor, durations, layers=[-1, 0, 2], batch_size=2, progress=False
    )
    assert len(passes) == 3 and list(layers) == [2, 0]  # -1 and 2 are one layer; ceil(5 / 2) passes for both
    for layer, embeddings in layers.items():
        one_by_one = torch.cat([model.embed(clip, sampling_rate=RATE, layer=layer) for clip in clips])
        torch.testing.assert_close(embeddings, one_by_one, atol=1e-5, rtol=0)
