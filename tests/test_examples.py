import subprocess
import sys

import numpy as np
import torch
from conftest import GOLDEN, GOLDEN_CHECKPOINT, REPO_ROOT

from resp_hf import RespM2DModel


def test_convert_and_embed_example(tmp_path, golden_audio):
    files = [GOLDEN / "inputs" / "kauh_BP1_asthma.wav", GOLDEN / "inputs" / "synth_noise_0.3s.wav"]
    result = subprocess.run(
        [
            sys.executable,
            REPO_ROOT / "examples" / "convert_and_embed.py",
            GOLDEN_CHECKPOINT,
            tmp_path / "model",
            *files,
            "--save",
            tmp_path / "embeddings.npy",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "kauh_BP1_asthma.wav: (3840,) embedding" in result.stdout
    saved = np.load(tmp_path / "embeddings.npy")
    model = RespM2DModel.from_pretrained(tmp_path / "model").eval()
    expected = model.embed([golden_audio["kauh_BP1_asthma"], golden_audio["synth_noise_0.3s"]], sampling_rate=16000)
    torch.testing.assert_close(torch.from_numpy(saved), expected, atol=1e-5, rtol=0)
