import shutil

from conftest import OPERA
from datasets import load_from_disk
from test_sprsound import write_release

from resp_hf.cli import main as cli_main

ICBHI = OPERA / "datasets" / "icbhi"


def test_list_shows_opera_and_cycle_tasks_with_licenses_and_buildability(tmp_path, capsys):
    release = write_release(tmp_path / "SPRSound")
    assert cli_main(["tasks", "list", "--icbhi-root", str(ICBHI), "--sprsound-root", str(release)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "T7" in lines and "T19" in lines  # OPERA's tasks come from resp_hf.opera
    assert "CC0" in lines["icbhi-4class"] and "yes (10 recordings)" in lines["icbhi-4class"]
    assert "CC BY 4.0" in lines["sprsound-2-2"]
    assert "yes (train, inter_test_2022, intra_test_2022, test_2023)" in lines["sprsound-1-1"]
    (tmp_path / "empty").mkdir()
    assert cli_main(["tasks", "list", "--sprsound-root", str(tmp_path / "empty")]) == 0
    assert "no: no train2022_json folder" in capsys.readouterr().out


def test_build_saves_a_task_that_loads_back(tmp_path, capsys):
    output = tmp_path / "icbhi"
    args = ["tasks", "build", "icbhi-4class", "--icbhi-root", str(ICBHI), "--output", str(output)]
    assert cli_main([*args, "--validation-fraction", "0"]) == 0
    assert "test: 91 cycles (80 normal, 1 crackle, 10 wheeze, 0 both)" in capsys.readouterr().out
    dataset = load_from_disk(str(output))
    assert {name: len(split) for name, split in dataset.items()} == {"train": 6, "test": 91}
    other = ["tasks", "build", "icbhi-4class", "--icbhi-root", str(ICBHI), "--output", str(tmp_path / "other")]
    assert cli_main(other) == 2  # one training patient: no patient-disjoint validation split
    assert "training split has 1 patient(s)" in capsys.readouterr().err
    assert cli_main(["tasks", "build", "T7", "--output", str(tmp_path / "t7")]) == 2
    assert "T7 is an OPERA task: pass --opera-root" in capsys.readouterr().err


def test_build_refuses_an_earlier_build_unless_overwrite(tmp_path, capsys):
    output = tmp_path / "icbhi"
    args = ["tasks", "build", "icbhi-2class", "--icbhi-root", str(ICBHI), "--output", str(output)]
    assert cli_main([*args, "--validation-fraction", "0"]) == 0
    first = load_from_disk(str(output))["test"]["cycle"]
    assert cli_main([*args, "--validation-fraction", "0"]) == 2
    assert f"The output folder {output} is not empty" in capsys.readouterr().err
    assert cli_main([*args, "--validation-fraction", "0", "--overwrite"]) == 0
    assert load_from_disk(str(output))["test"]["cycle"] == first
    assert not [path for path in tmp_path.iterdir() if path.name != "icbhi"], "no temporary folder is left"


def test_build_never_replaces_the_folder_holding_its_data(tmp_path, capsys):
    data = tmp_path / "data" / "icbhi"
    shutil.copytree(ICBHI, data)
    before = sorted(path.relative_to(data) for path in data.rglob("*"))
    for output in (data, data.parent):
        args = ["tasks", "build", "icbhi-2class", "--icbhi-root", str(data), "--output", str(output)]
        assert cli_main([*args, "--validation-fraction", "0", "--overwrite"]) == 2
        assert f"{output} is or holds the input {data}" in capsys.readouterr().err
    assert sorted(path.relative_to(data) for path in data.rglob("*")) == before


def test_build_refuses_options_that_do_not_apply_to_the_task(tmp_path, capsys):
    output = str(tmp_path / "out")
    opera = ["tasks", "build", "T10", "--opera_root", str(OPERA), "--output_dir", output]
    cycle_options = ["--split_file", "/nonexistent.txt", "--validation_fraction", "0.9", "--validation_seed", "5"]
    assert cli_main([*opera, *cycle_options, "--skip_invalid_cycles"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == (
        "resp-hf tasks: error: --split_file, --validation_fraction, --validation_seed, --skip_invalid_cycles "
        "do(es) not apply to the OPERA task T10: leave them out."
    )
    release = write_release(tmp_path / "SPRSound")
    sprsound = ["tasks", "build", "sprsound-1-1", "--sprsound_root", str(release), "--output_dir", output]
    assert cli_main([*sprsound, "--split_file", "split.txt"]) == 2
    assert "--split_file do(es) not apply to the SPRSound task sprsound-1-1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_option_given_at_its_default_value_is_still_refused_where_it_does_not_apply(tmp_path, capsys):
    opera = ["tasks", "build", "T10", "--opera_root", str(OPERA), "--output_dir", str(tmp_path / "out")]
    assert cli_main([*opera, "--validation_fraction", "0.2", "--validation_seed", "1337"]) == 2
    assert capsys.readouterr().err.strip() == (
        "resp-hf tasks: error: --validation_fraction, --validation_seed do(es) not apply to the OPERA task T10: "
        "leave them out."
    )
    assert not (tmp_path / "out").exists()


def test_the_task_benchmark_refuses_a_split_file_none_of_its_tasks_reads_before_reading_data(tmp_path, capsys):
    output = tmp_path / "out"
    args = ["tasks", "benchmark", "--model", str(tmp_path / "no-model"), "--output_dir", str(output)]
    args += ["--tasks", "sprsound-1-1,sprsound-2-1", "--sprsound_root", str(tmp_path / "no-release")]
    assert cli_main([*args, "--split_file", "split.txt"]) == 2
    assert capsys.readouterr().err.strip() == (
        "resp-hf tasks: error: --split_file do(es) not apply to the SPRSound tasks sprsound-1-1, sprsound-2-1: "
        "leave them out."
    )
    assert not output.exists()
