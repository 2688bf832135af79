"""The remote-code folder's layering: audio is decoded in one file, the configuration stands alone."""

import ast

import pytest
from conftest import REPO_ROOT

FOLDER = REPO_ROOT / "src" / "resp_hf" / "models" / "resp_m2d"
# Which sibling modules each file may import.
ALLOWED_SIBLINGS = {
    "configuration_resp_m2d": set(),
    "audio_utils_resp_m2d": set(),
    "feature_extraction_resp_m2d": {"configuration_resp_m2d", "audio_utils_resp_m2d"},
    "modeling_resp_m2d": {"configuration_resp_m2d", "audio_utils_resp_m2d", "feature_extraction_resp_m2d"},
    "pipeline_resp_m2d": {"audio_utils_resp_m2d"},
}
AUDIO_DECODERS = {"soundfile", "soxr", "torchaudio", "torchcodec", "librosa"}


def imports_of(module):
    tree = ast.parse((FOLDER / f"{module}.py").read_text())
    siblings, packages = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            (siblings if node.level else packages).add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
    return siblings, packages


@pytest.mark.parametrize("module", sorted(ALLOWED_SIBLINGS))
def test_each_file_imports_only_the_siblings_below_it(module):
    siblings, packages = imports_of(module)
    assert siblings <= ALLOWED_SIBLINGS[module], siblings
    if module != "audio_utils_resp_m2d":
        assert not packages & AUDIO_DECODERS, f"{module} decodes audio itself: {packages & AUDIO_DECODERS}"
