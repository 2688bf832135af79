"""The `golden` marker: tests that need ../shared skip with a reason when it is missing, and CI refuses to run."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

SAMPLE_TESTS = """
import pytest
from conftest import GOLDEN, OPERA

RECORDING = OPERA / "recording.wav"


def read_recording():
    return RECORDING.read_bytes()


def test_reads_shared_data_through_a_helper():
    assert read_recording() == b"audio"


@pytest.mark.parametrize("root", [str(GOLDEN)])
def test_takes_a_shared_path_as_a_parameter(root):
    assert root.endswith("golden")


def test_uses_a_golden_fixture(golden_meta):
    assert golden_meta == {}


def test_needs_nothing_shared():
    assert 1 + 1 == 2
"""


def run_sample_tests(root, ci=False):
    """Runs SAMPLE_TESTS with this conftest in `root`/repo/tests, so that ../shared is `root`/shared."""
    tests = root / "repo" / "tests"
    tests.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "tests" / "conftest.py", tests / "conftest.py")
    shutil.copyfile(REPO_ROOT / "pyproject.toml", tests.parent / "pyproject.toml")  # registers the marker
    (tests / "test_sample.py").write_text(SAMPLE_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.update(CI="true" if ci else "false", COLUMNS="400")  # wide enough for the skip reasons
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(tests)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tests, timeout=600)


def test_without_shared_data_the_tests_that_need_it_skip_and_the_others_run(tmp_path):
    result = run_sample_tests(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed, 3 skipped" in result.stdout
    for name in ("reads_shared_data_through_a_helper", "takes_a_shared_path_as_a_parameter", "uses_a_golden_fixture"):
        assert re.search(rf"test_{name}\S* SKIPPED \(\.\./shared/golden not found: expected ", result.stdout), name
    assert "test_needs_nothing_shared PASSED" in result.stdout and "warning" not in result.stdout


def test_without_shared_data_ci_is_an_error(tmp_path):
    result = run_sample_tests(tmp_path, ci=True)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "../shared/golden not found" in result.stderr and "CI must provide it" in result.stderr


def test_with_shared_data_every_test_runs(tmp_path):
    checkpoint = tmp_path / "shared" / "golden" / "m2d_vit_base-80x608p16x16p16k-golden" / "checkpoint-300.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    (tmp_path / "shared" / "golden" / "meta.json").write_text("{}")
    (tmp_path / "shared" / "opera").mkdir()
    (tmp_path / "shared" / "opera" / "recording.wav").write_bytes(b"audio")
    result = run_sample_tests(tmp_path, ci=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 passed" in result.stdout and "skipped" not in result.stdout
