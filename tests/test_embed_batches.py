"""`embed()` in batches: length-sorted batches give the one-clip-at-a-time results; one autocast region per call."""

import pytest
import torch
from conftest import noise, tiny_model

from resp_hf import RespM2DFeatureExtractor, RespM2DModel


@pytest.mark.golden
def test_bf16_embeddings_stay_within_cosine_0999_of_fp32_on_the_golden_clips(golden_folder, golden_audio):
    model = RespM2DModel.from_pretrained(golden_folder).eval()
    clips = list(golden_audio.values())
    fp32 = model.embed(clips, sampling_rate=16000, progress=False)
    bf16 = model.embed(clips, sampling_rate=16000, progress=False, autocast_dtype=torch.bfloat16)
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() >= 0.999


def test_length_bucketed_embed_equals_one_clip_at_a_time():
    model = tiny_model()
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    clips = [noise(seconds, seed=i) for i, seconds in enumerate((0.5, 7.0, 1.2, 3.3, 0.7, 5.1))]
    bucketed = model.embed(clips, sampling_rate=16000, batch_size=3, progress=False)
    with torch.no_grad():
        alone = torch.cat([model(**extractor(clip, sampling_rate=16000)).pooler_output for clip in clips])
    torch.testing.assert_close(bucketed, alone, atol=1e-5, rtol=0)


def test_embed_casts_the_weights_once_for_all_batches(monkeypatch):
    """Autocast caches the cast weights while its region is open: one region for all batches casts them once."""
    entered = []

    class CountingAutocast(torch.autocast):
        def __enter__(self):
            entered.append(self.fast_dtype)
            return super().__enter__()

    monkeypatch.setattr(torch, "autocast", CountingAutocast)
    model = tiny_model()
    clips = [noise(seconds, seed=seed) for seed, seconds in enumerate((0.7, 1.2, 2.5))]
    model.embed(clips, sampling_rate=16000, batch_size=1, progress=False, autocast_dtype=torch.bfloat16)
    assert entered == [torch.bfloat16]
