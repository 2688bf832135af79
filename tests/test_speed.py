import json
import subprocess
import sys

import torch
from conftest import REPO_ROOT, noise, tiny_model

from resp_hf import RespM2DFeatureExtractor, RespM2DModel


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


def test_speed_benchmark_quick_mode_writes_its_report(tmp_path):
    result = subprocess.run(
        [sys.executable, REPO_ROOT / "benchmarks" / "speed.py", "--quick", "--compile", "--output", tmp_path],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["feature_extraction"]["audio_seconds_per_second"] > 0
    rows = {(row["dtype"], row["batch_size"]) for row in report["end_to_end"]}
    assert rows == {("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2), ("fp32 (compiled)", 2), ("bf16 (compiled)", 2)}
    assert all(0 < row["fraction_of_attainable"] for row in report["end_to_end"])
    mixed = report["mixed_lengths"]["rows"]
    assert {(row["dtype"], row["batch_size"], row["order"]) for row in mixed} == {
        (dtype, batch, order)
        for dtype in ("fp32", "bf16")
        for batch, order in ((1, "length-bucketed"), (2, "length-bucketed"), (2, "input order"))
    }
    assert all(row["padded_flop_share"] == 0 for row in mixed if row["batch_size"] == 1)
    assert all(0 <= row["padded_flop_share"] < 1 and row["audio_seconds_per_second"] > 0 for row in mixed)
    assert [(row["dtype"], row["chunks"]) for row in report["chunk_batches"]] == [
        (dtype, chunks) for dtype in ("fp32", "bf16") for chunks in (2, 4)
    ]
    assert all(row["fraction_of_attainable"] > 0 for row in report["chunk_batches"])
    assert report["peak_memory_mb"] > 0
    markdown = (tmp_path / "speed.md").read_text()
    assert (
        "| dtype | batch |" in markdown and "| dtype | batch | order |" in markdown and "Feature extraction" in markdown
    )
