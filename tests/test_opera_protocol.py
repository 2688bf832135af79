"""`resp-hf opera protocol`: every task's values against OPERA's linear_eval.py at the commit the plugin pins."""

import json

import pytest

from resp_hf.cli import main as cli_main
from resp_hf.opera.protocol import PROTOCOLS, get_protocol

# Transcribed by hand from OPERA 3622310 src/benchmark/linear_eval.py `__main__` and the linear_evaluation_* functions:
# (epochs, batch size, L2, checkpoint every n epochs, early-stopping patience, seeds, validation fraction)
FIVE = (0, 1, 2, 3, 4)
OPERA_VALUES = {
    "T1": (64, 64, 1e-5, 1, None, FIVE, None),  # coviduk
    "T2": (64, 64, 1e-5, 1, None, FIVE, None),
    "T3": (64, 64, 1e-5, 1, None, FIVE, None),  # covid19sounds: function defaults
    "T4": (64, 64, 1e-5, 1, None, FIVE, None),
    "T5": (64, 64, 1e-5, 1, None, FIVE, None),  # coughvidcovid
    "T6": (64, 64, 1e-5, 1, None, FIVE, None),  # coughvidsex
    "T7": (64, 32, 1e-5, 1, None, FIVE, 0.2),  # icbhidisease: test_size=0.2, random_state=1337
    "T8": (64, 32, 1e-5, 1, None, FIVE, 0.2),  # coswarasmoker: epochs=64 passed (function default 256)
    "T9": (64, 32, 1e-5, 1, None, FIVE, 0.2),
    "T10": (50, 32, 1e-5, 5, None, FIVE, 0.1),  # kauh: every_n_epochs=5, test_size=0.1
    "T11": (64, 32, 1e-5, 1, None, FIVE, None),  # copd: batch_size default 32
    "T12": (32, 64, 1e-5, 3, None, FIVE, None),  # snoring: epochs=32, every_n_epochs=3
    **{f"T{n}": (64, 64, 1e-1, 3, 5, (0,), 0.11) for n in range(13, 19)},  # spirometry (LOOCV)
    "T19": (64, 64, 1e-1, 1, None, (0,), 0.2),  # rr (LOOCV)
}


@pytest.mark.parametrize("task_id", list(OPERA_VALUES))
def test_every_task_protocol_has_operas_values(task_id):
    protocol = get_protocol(task_id)
    epochs, batch, l2, every, patience, seeds, fraction = OPERA_VALUES[task_id]
    assert (protocol.epochs, protocol.batch_size, protocol.l2_strength) == (epochs, batch, l2)
    assert (protocol.checkpoint_every, protocol.early_stopping_patience) == (every, patience)
    assert (protocol.seeds, protocol.validation_fraction) == (seeds, fraction)
    # shared by every task: LinearHead(R) lr=1e-4 with Adam, DecayLearningRate(0.97), gradient_clip_val=1.0
    assert (protocol.learning_rate, protocol.optimizer, protocol.lr_decay, protocol.max_grad_norm) == (
        1e-4,
        "Adam",
        0.97,
        1.0,
    )
    assert (protocol.crop, protocol.seconds) == ("random", 10.0)  # EVAR WavDataset(random_crop=True), input_sec=10
    regression = int(task_id[1:]) >= 13
    assert protocol.spread == ("folds" if regression else "seeds")
    assert protocol.monitor.startswith("validation MAE" if regression else "validation AUROC")
    if regression:
        assert protocol.validation_seed == 42
    if patience:
        assert protocol.early_stopping_min_delta == 0.001
    described = set(protocol.to_dict()) - {"sources", "task", "name"}
    sourced = ("epochs", "l2_strength", "checkpoint_every", "seeds", "crop")
    assert not [name for name in sourced if name not in protocol.sources]
    assert described >= {"data", "label_rule", "split", "validation", "metric", "learning_rate", "lr_decay"}


def test_the_protocol_command_prints_the_object_the_benchmark_runs(capsys):
    from resp_hf.linear_probe.runner import opera_job

    assert cli_main(["opera", "protocol", "T10", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == get_protocol("T10").to_dict()
    assert opera_job("kauh_obstructive", opera_root=None).protocol is PROTOCOLS["T10"]
    assert cli_main(["opera", "protocol", "T13"]) == 0
    text = capsys.readouterr().out
    assert "early_stopping_patience" in text and "EarlyStopping(monitor='valid_MAE'" in text
    assert "linear_evaluation_mmlung" in text and "LinearRegression" not in text
    assert cli_main(["opera", "protocol", "T99"]) == 2
    assert "Unknown OPERA task 'T99'" in capsys.readouterr().err
