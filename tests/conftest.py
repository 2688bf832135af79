import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

# Offline, with a private Hugging Face home: set before transformers / huggingface_hub read them at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="resp_hf_tests_hf_home_")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel, convert_m2d_checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
OPERA = SHARED / "opera"
GOLDEN = SHARED / "golden"
GOLDEN_CHECKPOINT = GOLDEN / "m2d_vit_base-80x608p16x16p16k-golden" / "checkpoint-300.pth"
MISSING_SHARED = f"../shared/golden not found: expected {GOLDEN_CHECKPOINT} (the shared reference data)"


def pytest_sessionstart(session):
    # CI always checks out ../shared: there a missing copy is a broken setup, not a reason to skip the exactness tests.
    if os.environ.get("CI", "").lower() == "true" and not GOLDEN_CHECKPOINT.is_file():
        raise pytest.UsageError(f"{MISSING_SHARED}; CI must provide it.")


def pytest_collection_modifyitems(config, items):
    """Marks `golden` every test that needs ../shared; without it (outside CI) those tests skip and the rest run."""
    for item in items:
        if needs_shared(item):
            item.add_marker(pytest.mark.golden)
        if item.get_closest_marker("golden") and not GOLDEN_CHECKPOINT.is_file():
            item.add_marker(pytest.mark.skip(reason=MISSING_SHARED))


def needs_shared(item):
    """True if the test, a fixture it uses or a module helper they call names a path under ../shared."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and str(SHARED) in repr(callspec.params):
        return True
    fixtures = [fixture.func for defs in item._fixtureinfo.name2fixturedefs.values() for fixture in defs]
    return any(_names_shared_path(function) for function in [item.function, *fixtures])


def _names_shared_path(function):
    """Whether the code of `function`, or of a function of its module that it names, names a path under ../shared."""
    module = vars(sys.modules.get(getattr(function, "__module__", None), object))
    codes, seen = [getattr(function, "__code__", None)], set()
    while codes:
        code = codes.pop()
        if code is None or code in seen:
            continue
        seen.add(code)
        for name in code.co_names:
            value = module.get(name)
            if _is_shared_path(value):
                return True
            if inspect.isfunction(value) and value.__module__ == function.__module__:
                codes.append(value.__code__)
        codes += [const for const in code.co_consts if inspect.iscode(const)]  # lambdas, comprehensions, inner defs
    return False


def _is_shared_path(value):
    if isinstance(value, (list, tuple)):
        return any(_is_shared_path(item) for item in value)
    return isinstance(value, Path) and value.is_relative_to(SHARED)


@pytest.fixture(scope="session")
def golden_meta():
    return json.loads((GOLDEN / "meta.json").read_text())


@pytest.fixture(scope="session")
def golden_expected():
    with np.load(GOLDEN / "expected.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def golden_audio(golden_meta):
    """Golden clips as float32 arrays at 16 kHz, by name."""
    clips = {}
    for name, meta in golden_meta.items():
        audio, rate = soundfile.read(GOLDEN / "inputs" / meta["wav"], dtype="float32")
        assert rate == 16000
        clips[name] = audio
    return clips


@pytest.fixture(scope="session")
def golden_folder(tmp_path_factory):
    """The golden checkpoint converted once per test session."""
    folder = tmp_path_factory.mktemp("golden_converted")
    convert_m2d_checkpoint(GOLDEN_CHECKPOINT, folder)
    return folder


def tiny_config(**overrides):
    """A 2-layer, 64-wide encoder for fast tests."""
    settings = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        input_size=(80, 96),
        patch_size=(16, 16),
        norm_mean=-5.0,
        norm_std=4.0,
    )
    settings.update(overrides)
    return RespM2DConfig(**settings)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return RespM2DModel(tiny_config(**overrides)).eval()


@pytest.fixture(scope="session")
def encoder_folder(tmp_path_factory):
    """The tiny encoder saved as a model folder, with its feature extractor."""
    folder = tmp_path_factory.mktemp("encoder")
    model = tiny_model()
    model.save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(model.config).save_pretrained(folder)
    return folder


class RespM2DModelTester:
    """
    A tiny config and a padded batch for the model tests, as Transformers' `ASTModelTester`: clips of `frames` log-mel
    frames, the second padded after `padded_from` (200 and 40 frames: chunks of 96, 96 and 8 frames, 13 and 3 time
    steps).
    """

    def __init__(self, batch_size=2, frames=200, padded_from=40, seed=0, **config_overrides):
        self.batch_size, self.frames, self.padded_from, self.seed = batch_size, frames, padded_from, seed
        self.config = tiny_config(**config_overrides)
        config = self.config
        self.seq_length = 1 + config.num_frequency_patches * config.time_patches_per_chunk  # tokens per chunk
        self.num_chunks = -(-frames // config.unit_frames)

    def prepare_inputs(self):
        """(input_features, attention_mask) of the batch: Gaussian features, the second clip padded."""
        generator = torch.Generator().manual_seed(self.seed)
        features = torch.randn(self.batch_size, self.config.num_mel_bins, self.frames, generator=generator)
        mask = torch.ones(self.batch_size, self.frames, dtype=torch.long)
        mask[1, self.padded_from :] = 0
        return features, mask


def noise(seconds, rate=16000, seed=0, amplitude=0.1):
    return (amplitude * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def run_without_resp_hf(code, *args, cwd=None):
    """Runs `code` in a fresh interpreter where `resp_hf` cannot be imported; returns the JSON it prints last."""
    import subprocess
    import sys

    script = "import sys\nsys.modules['resp_hf'] = None\n" + code
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
