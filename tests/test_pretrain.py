import argparse
import csv
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from accelerate.data_loader import DataLoaderShard
from conftest import GOLDEN_CHECKPOINT, run_without_resp_hf
from datasets import Audio, Dataset, DatasetDict

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DModel, convert_m2d_checkpoint
from resp_hf.cli import main as cli_main
from resp_hf.convert import file_sha256, load_checkpoint, read_m2d_checkpoint
from resp_hf.synthetic import write_two_class_recordings
from resp_hf.training import pretrain, pretraining_model
from resp_hf.training.pretrain import build_model, model_from_official, parameter_groups
from resp_hf.training.pretrain_data import LogMelUnits, norm_stats_from_crops, read_source
from resp_hf.training.pretraining_model import (
    M2DPretrainingModel,
    m2d_loss,
    predictor_config,
    predictor_config_from_weights,
    random_masks,
)

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "input_size": [80, 96],
    "norm_mean": -6.0,
    "norm_std": 4.0,
}
SMALL_PREDICTOR = ["--predictor-width", "32", "--predictor-depth", "2", "--predictor-heads", "4"]


def tiny_pretraining_model(seed=0):
    torch.manual_seed(seed)
    return M2DPretrainingModel(RespM2DConfig(**TINY), predictor_config(width=32, depth=2, heads=4))


@pytest.fixture(scope="module")
def log_mel_list(tmp_path_factory):
    """Synthetic recordings precomputed to log-mel .npy files with `resp-hf logmel`."""
    root = tmp_path_factory.mktemp("pretrain")
    write_two_class_recordings(root / "audio", per_class=16, seed=0, seconds=(1.5, 4.0))
    assert cli_main(["logmel", str(root / "audio"), str(root / "logmel")]) == 0
    return root / "logmel" / "files.csv"


def pretrain_args(data, output, steps, *extra):
    return [
        "pretrain",
        "--init",
        "scratch",
        "--encoder-config",
        json.dumps(TINY),
        "--data",
        str(data),
        "--output-dir",
        str(output),
        "--max-steps",
        str(steps),
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--log-every",
        "1",
        "--warmup-epochs",
        "0.5",
        "--base-lr",
        "1e-2",
        *SMALL_PREDICTOR,
        *extra,
    ]


def logged_rows(output):
    with open(output / "training_log.csv") as handle:
        return list(csv.DictReader(handle))


def logged_losses(output):
    return {int(row["step"]): float(row["loss"]) for row in logged_rows(output)}


def saved_checkpoints(output):
    return sorted(path.name for path in (output / "checkpoints").iterdir())


def test_masks_split_every_sample_into_visible_and_masked_patches():
    generator = torch.Generator().manual_seed(0)
    visible, masked = random_masks(4, 190, 0.7, generator)
    assert visible.shape == (4, 57) and masked.shape == (4, 133)  # int(190 * 0.3) visible
    for row in range(4):
        assert sorted(visible[row].tolist() + masked[row].tolist()) == list(range(190))
        assert visible[row].tolist() == sorted(visible[row].tolist()) and masked[row].tolist() == sorted(
            masked[row].tolist()
        )
    assert not torch.equal(visible[0], visible[1])
    with pytest.raises(ValueError, match="leaves 0 of 10 patches visible"):
        random_masks(1, 10, 0.95)


def test_predictor_outputs_line_up_with_the_masked_positions():
    model = tiny_pretraining_model().eval()
    predictor = model.predictor
    chunks = torch.randn(2, 80, 96)
    tokens = model.patch_tokens(chunks)
    visible, masked = random_masks(2, tokens.shape[1], 0.7, torch.Generator().manual_seed(1))
    online = model.encode_online(tokens, visible)
    with torch.no_grad():
        predictions = predictor(online, visible, masked)
        embedded = predictor.embed(online)
        for row in range(2):  # the full sequence built by hand, position by position
            sequence = predictor.mask_token[0].repeat(tokens.shape[1], 1).clone()
            for slot, position in enumerate(visible[row].tolist()):
                sequence[position] = embedded[row, 1 + slot]
            hidden = torch.cat([embedded[row, :1], sequence])[None] + predictor.position_embeddings
            for layer in predictor.layers:
                hidden, _ = layer(hidden)
            full = predictor.head(predictor.norm(hidden))[0, 1:]
            torch.testing.assert_close(predictions[row], full[masked[row]])
    assert predictions.shape == (2, masked.shape[1], 64)


def test_target_encodes_only_the_masked_patches_and_loss_is_m2d_normalized_mse():
    model = tiny_pretraining_model().eval()
    with torch.no_grad():  # a trained target norm shifts the targets' mean, which M2D's loss removes
        model.target_norm.bias.normal_(0, 0.5)
    chunks = torch.randn(2, 80, 96)
    torch.manual_seed(3)
    loss, predictions, targets, visible, masked = model(chunks)
    tokens = model.patch_tokens(chunks)
    expected_targets = model.encode_target(tokens, masked)
    torch.testing.assert_close(targets, expected_targets)
    changed = tokens.clone()
    changed.scatter_(1, visible[..., None].expand(-1, -1, 64), torch.randn(2, visible.shape[1], 64))
    torch.testing.assert_close(model.encode_target(changed, masked), targets)  # visible patches play no part
    # M2D's norm_pix_loss: standardize each target (unbiased variance, eps 1e-6), then |p/|p| - t/|t||^2 = 2 - 2 cos.
    standardized = (targets - targets.mean(-1, keepdim=True)) / (targets.var(-1, keepdim=True) + 1e-6) ** 0.5
    normalize = torch.nn.functional.normalize
    difference = normalize(predictions, dim=-1) - normalize(standardized, dim=-1)
    torch.testing.assert_close(loss, difference.square().sum(-1).mean())


def m2d_sincos_table(width, frequency_patches, time_patches):
    """MAE/M2D `get_2d_sincos_pos_embed`, patch (f, t) by patch: [sin(t w), cos(t w), sin(f w), cos(f w)], CLS zero."""
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows = [torch.zeros(width, dtype=torch.float64)]
    for f in range(frequency_patches):
        for t in range(time_patches):
            rows.append(torch.cat([(t * omega).sin(), (t * omega).cos(), (f * omega).sin(), (f * omega).cos()]))
    return torch.stack(rows).float()[None]


def test_positional_tables_are_m2d_sincos_and_stay_fixed_during_training():
    model = tiny_pretraining_model()
    encoder_table = model.online.embeddings.position_embeddings
    torch.testing.assert_close(encoder_table, m2d_sincos_table(64, 5, 6))  # 80 x 96 input, 16 x 16 patches
    torch.testing.assert_close(model.predictor.position_embeddings, m2d_sincos_table(32, 5, 6))
    before = encoder_table.detach().clone()
    patch_weight = model.online.embeddings.patch_embeddings.projection.weight.detach().clone()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-2)
    model(torch.randn(2, 80, 96))[0].backward()
    optimizer.step()
    assert torch.equal(encoder_table, before)
    assert not torch.equal(model.online.embeddings.patch_embeddings.projection.weight, patch_weight)


def test_ema_update_moves_the_target_towards_the_online_encoder():
    model = tiny_pretraining_model()
    with torch.no_grad():
        for parameter in model.online.parameters():
            parameter.add_(torch.randn_like(parameter))
    old = [p.clone() for p in model.target_layers.parameters()] + [p.clone() for p in model.target_norm.parameters()]
    online = list(model.online.encoder.layer.parameters()) + list(model.online.layernorm.parameters())
    model.update_target(0.99)
    new = list(model.target_layers.parameters()) + list(model.target_norm.parameters())
    for before, after, source in zip(old, new, online):
        torch.testing.assert_close(after, 0.99 * before + 0.01 * source)
    assert not any(p.requires_grad for p in new)


def test_smoke_training_lowers_the_loss_and_exports_a_loadable_encoder(log_mel_list, tmp_path):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 30)) == 0
    losses = logged_losses(output)
    assert len(losses) == 30
    assert sum(losses[s] for s in range(26, 31)) / 5 < sum(losses[s] for s in range(1, 6)) / 5
    assert (output / "loss.png").is_file() and (output / "checkpoints" / "step-30").is_dir()
    card = (output / "encoder" / "README.md").read_text()
    assert "Further pre-trained with `resp-hf pretrain`" in card and "for 30 optimizer steps" in card
    assert "Converted from the original checkpoint" not in card
    assert list(output.rglob("events.out.tfevents*"))  # TensorBoard log
    model, notes = build_model(str(output / "encoder"))
    assert "target encoder and predictor" in notes[0] and "--predictor-* options do not apply" in notes[1]
    remote = run_without_resp_hf(REMOTE_EMBED, output / "encoder", cwd=tmp_path)
    torch.manual_seed(0)
    features = torch.randn(1, 80, 150)
    with torch.no_grad():
        expected = model.online(features).pooler_output[0]
    torch.testing.assert_close(torch.tensor(remote), expected, atol=1e-6, rtol=0)


REMOTE_EMBED = """
import json, torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
torch.manual_seed(0)
features = torch.randn(1, 80, 150)
with torch.no_grad():
    print(json.dumps(model(features).pooler_output[0].tolist()))
"""


def test_resume_gives_the_same_next_losses_as_an_uninterrupted_run(log_mel_list, tmp_path):
    assert cli_main(pretrain_args(log_mel_list, tmp_path / "straight", 8, "--save-every", "4")) == 0
    straight = logged_losses(tmp_path / "straight")
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step-4", tmp_path / "resumed" / "checkpoints" / "step-4")
    assert cli_main(pretrain_args(log_mel_list, tmp_path / "resumed", 8, "--resume", "latest")) == 0
    resumed = logged_losses(tmp_path / "resumed")
    assert sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        assert resumed[step] == pytest.approx(straight[step], abs=1e-6), step


def test_resuming_an_older_checkpoint_drops_the_later_log_rows_and_sets_later_checkpoints_aside(
    log_mel_list, tmp_path, monkeypatch
):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 6, "--save-every", "3")) == 0
    first = logged_losses(output)
    checkpoint = str(output / "checkpoints" / "step-3")
    saves = []
    monkeypatch.setattr(pretrain, "save_checkpoint", lambda *args: saves.append(saved_checkpoints(output)))
    assert cli_main(pretrain_args(log_mel_list, output, 4, "--resume", checkpoint)) == 0
    assert saves == [["step-3", "superseded"]]  # the earlier run's step-6 cannot be taken for the latest
    assert (output / "checkpoints" / "superseded" / "step-6").is_dir()
    monkeypatch.undo()
    assert cli_main(pretrain_args(log_mel_list, output, 6, "--resume", checkpoint)) == 0
    assert [int(row["step"]) for row in logged_rows(output)] == [1, 2, 3, 4, 5, 6]
    for step, loss in logged_losses(output).items():
        assert loss == pytest.approx(first[step], abs=1e-6), step


RANK_PROBE = """
import os, signal, sys
import torch
from resp_hf.training import pretraining_model
from resp_hf.training.pretrain import main

draw_masks = pretraining_model.random_masks
rank = os.environ["RANK"]
draws = []


def recorded_masks(*args, **kwargs):
    visible, masked = draw_masks(*args, **kwargs)
    draws.append(visible)
    torch.save(draws, f"masks-{rank}.pt")
    if rank == os.environ.get("SIGNAL_RANK") and len(draws) == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # this process alone is asked to stop, during step 2
    return visible, masked


pretraining_model.random_masks = recorded_masks
sys.exit(main())
"""


def launch_two_cpu_processes(arguments, cwd, env=None, timeout=300):
    """`accelerate launch` of `RANK_PROBE` on two CPU processes; on a timeout the launcher is asked to end them."""
    (cwd / "probe.py").write_text(RANK_PROBE)
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    process = subprocess.Popen(
        [*accelerate, "probe.py", *arguments, "--cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun then stops its workers, which run in sessions of their own (SIGKILL after 30 s)
        process.communicate(timeout=120)
        raise
    return process.returncode, stdout, stderr


def test_accelerate_launch_with_two_cpu_processes(log_mel_list, tmp_path):
    arguments = pretrain_args(log_mel_list, tmp_path / "ddp", 4, "--warmup-epochs", "1")[1:]
    returncode, stdout, stderr = launch_two_cpu_processes(arguments, tmp_path)
    assert returncode == 0, stderr[-4000:]
    assert "effective batch 16" in stdout and stdout.count("Exported the online encoder") == 1
    assert (tmp_path / "ddp" / "encoder" / "model.safetensors").is_file()
    assert RespM2DModel.from_pretrained(tmp_path / "ddp" / "encoder").config.hidden_size == 64
    # The single-process schedule in optimizer steps: 32 clips / (8 x 2 processes) = 2 steps an epoch, so 2 warm-up
    # steps out of 4, at 1e-2 x 16 / 256.
    peak, warmup, total = 1e-2 * 16 / 256, 2, 4
    for row in logged_rows(tmp_path / "ddp"):
        step = int(row["step"])
        progress = (step - warmup) / (total - warmup)
        expected = peak * step / warmup if step < warmup else peak * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(row["lr"]) == pytest.approx(expected, abs=1e-12), step
    first, second = (torch.load(tmp_path / f"masks-{rank}.pt") for rank in (0, 1))
    assert len(first) == len(second) == 4
    assert not any(torch.equal(a, b) for a, b in zip(first, second))  # each process draws its own masks


def test_a_stop_request_on_one_process_stops_every_process_at_the_same_step(log_mel_list, tmp_path):
    output = tmp_path / "ddp"
    arguments = pretrain_args(log_mel_list, output, 100, "--save-every", "100")[1:]
    returncode, stdout, stderr = launch_two_cpu_processes(arguments, tmp_path, env={"SIGNAL_RANK": "1"})
    assert returncode != 0 and "Interrupted: saved step 2" in stdout, stderr[-4000:]
    assert saved_checkpoints(output) == ["step-2"]
    saved = {path.name for path in (output / "checkpoints" / "step-2").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"} <= saved
    assert sorted(logged_losses(output)) == [1, 2]


def test_initialization_from_the_golden_checkpoint_reuses_online_target_and_predictor(golden_folder):
    model, reused = model_from_official(GOLDEN_CHECKPOINT)
    assert reused == ["target encoder", "predictor"]
    official = load_checkpoint(GOLDEN_CHECKPOINT)["model"]
    converted = RespM2DModel.from_pretrained(golden_folder).state_dict()
    assert all(torch.equal(model.online.state_dict()[key], value) for key, value in converted.items())
    assert torch.equal(model.target_layers[1].attention.qkv.weight, official["target_blocks.1.attn.qkv.weight"])
    assert torch.equal(model.target_norm.bias, official["target_norm.bias"])
    assert torch.equal(model.predictor.layers[0].mlp.fc2.weight, official["decoder_blocks.0.mlp.fc2.weight"])
    assert torch.equal(model.predictor.position_embeddings, official["decoder_pos_embed"])
    assert torch.equal(model.predictor.mask_token, official["mask_token"])
    assert torch.equal(model.predictor.head.weight, official["decoder_pred.weight"])
    assert model.config.norm_mean == pytest.approx(-5.3)


def test_the_checkpoint_reader_names_target_and_predictor_weights_as_the_pretraining_model():
    checkpoint = read_m2d_checkpoint(GOLDEN_CHECKPOINT)
    assert checkpoint.name == GOLDEN_CHECKPOINT.parent.name and checkpoint.notes == []
    assert set(checkpoint.encoder_weights) == set(RespM2DModel(checkpoint.config).state_dict())
    weights = checkpoint.pretraining_weights
    model = M2DPretrainingModel(checkpoint.config, predictor_config_from_weights(weights, GOLDEN_CHECKPOINT))
    assert set(weights) == {key for key in model.state_dict() if not key.startswith("online.")}
    assert sum(checkpoint.dropped.values()) == len(weights)  # what conversion drops is what pre-training reuses


def save_official(tmp_path, state, folder="m2d_vit_base-80x608p16x16p16k-variant"):
    path = tmp_path / folder / "checkpoint.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": state}, path)
    return path


def test_pretraining_and_conversion_read_an_encoder_only_release_alike(tmp_path):
    """One reader: the same encoder and config (the default norm statistics when the file has none) in both."""
    official = load_checkpoint(GOLDEN_CHECKPOINT)["model"]
    encoder_keys = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
    path = save_official(tmp_path, {k: v for k, v in official.items() if k.startswith(encoder_keys)})
    report = convert_m2d_checkpoint(path, tmp_path / "converted")
    assert report.notes == ["no norm_stats in the checkpoint; using the M2D default (-7.1, 4.2)"]
    converted = RespM2DModel.from_pretrained(tmp_path / "converted")
    model, reused = model_from_official(path, predictor=predictor_config(width=32, depth=1, heads=1))
    assert reused == []
    saved = {"architectures", "dtype", "_name_or_path"}  # set by saving and loading a folder
    assert {k: v for k, v in converted.config.to_dict().items() if k not in saved} == {
        k: v for k, v in model.config.to_dict().items() if k not in saved
    }
    assert (model.config.norm_mean, model.config.norm_std) == (-7.1, 4.2)
    for key, value in converted.state_dict().items():
        assert torch.equal(model.online.state_dict()[key], value), key
    assert torch.equal(model.target_layers[1].mlp.fc1.weight, official["blocks.1.mlp.fc1.weight"])  # a fresh copy


def test_an_unknown_predictor_weight_stops_pretraining_but_not_conversion(tmp_path):
    state = load_checkpoint(GOLDEN_CHECKPOINT)["model"]
    state["decoder_blocks.0.ls1.gamma"] = torch.ones(512)  # layer scale, which the predictor does not have
    path = save_official(tmp_path, state)
    with pytest.raises(
        ValueError, match=rf"weights of {path} do not fit .*: unexpected: decoder_blocks.0.ls1.gamma\.$"
    ):
        model_from_official(path)
    assert convert_m2d_checkpoint(path, tmp_path / "converted").dropped["decoder_blocks"] == 13


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(decoder_embed_weight="x"), "pre-training weight 'decoder_embed.weight' must be a floating"),
        (lambda s: s.update({"target_norm.bias": torch.zeros(0)}), "'target_norm.bias' must be a non-empty tensor"),
        (
            lambda s: s.update(mask_token=torch.zeros(1, 1, 100000)),
            r"predictor.mask_token: checkpoint \(1, 1, 100000\)",
        ),
        (
            lambda s: s.update({"decoder_embed.weight": torch.zeros(100000, 768)}),
            r"wrong shape: predictor.embed.bias: checkpoint \(512,\), model \(100000,\)",
        ),
        (
            lambda s: s.update({"target_blocks.1.mlp.fc1.weight": torch.zeros(10, 768)}),
            r"target_layers.1.mlp.fc1.weight: checkpoint \(10, 768\), model \(3072, 768\)",
        ),
        (
            lambda s: [s.pop(key) for key in list(s) if key.startswith("decoder_blocks.")],
            "holds a predictor without blocks: the checkpoint is incomplete",
        ),
    ],
    ids=["not_a_tensor", "empty", "wide_mask_token", "wide_predictor", "target_shape", "no_predictor_blocks"],
)
def test_damaged_target_and_predictor_weights_are_refused_before_a_model_is_built(tmp_path, edit, message):
    state = load_checkpoint(GOLDEN_CHECKPOINT)["model"]
    edit(state)
    if "decoder_embed_weight" in state:
        state["decoder_embed.weight"] = state.pop("decoder_embed_weight")
    path = save_official(tmp_path, state)
    with pytest.raises(ValueError, match=message) as error:
        model_from_official(path)
    assert str(path) in str(error.value)


def saved_pretraining_folder(tmp_path, edit):
    """A resp_hf folder with its saved target encoder and predictor (`m2d_pretraining.safetensors`), edited."""
    from safetensors.torch import save_file

    config = RespM2DConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    model = M2DPretrainingModel(config, predictor_config(width=32, depth=2, heads=2))
    model.online.save_pretrained(tmp_path / "folder")
    rest = {key: value.contiguous() for key, value in model.state_dict().items() if not key.startswith("online.")}
    edit(rest)
    save_file(rest, tmp_path / "folder" / pretrain.STATE_FILE)
    return tmp_path / "folder"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("predictor.layers.1.mlp.fc1.weight"), r"missing: predictor.layers.1.mlp.fc1.weight\.$"),
        (lambda s: s.pop("target_norm.bias"), r"missing: target_norm.bias\.$"),
        (
            lambda s: s.update({"predictor.layers.999.layernorm_before.weight": torch.zeros(32)}),
            r"holds predictor blocks \['0', '1', '999'\], not 0 to 2: the checkpoint is incomplete or damaged",
        ),
        (
            lambda s: s.update({"predictor.layers.x.layernorm_before.weight": torch.zeros(32)}),
            r"holds predictor blocks \['0', '1', 'x'\]",
        ),
    ],
    ids=["predictor_block_weight", "target_norm", "far_block", "not_a_number"],
)
def test_a_saved_pretraining_state_must_hold_whole_parts_that_fit(tmp_path, edit, message):
    folder = saved_pretraining_folder(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as error:
        build_model(str(folder))
    assert str(folder / pretrain.STATE_FILE) in str(error.value)


def test_a_saved_pretraining_state_without_a_target_gets_a_fresh_copy_and_a_damaged_one_is_named(tmp_path):
    folder = saved_pretraining_folder(tmp_path, lambda s: [s.pop(key) for key in list(s) if key.startswith("target_")])
    model, _ = build_model(str(folder))  # the predictor is reused; the target is made from the online encoder
    assert torch.equal(model.target_layers[1].mlp.fc2.weight, model.online.encoder.layer[1].mlp.fc2.weight)
    state = folder / pretrain.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{state} is not a readable safetensors file"):
        build_model(str(folder))


def test_pretrain_smoke_example(tmp_path):
    from conftest import REPO_ROOT

    result = subprocess.run(
        [sys.executable, REPO_ROOT / "examples" / "pretrain_smoke.py", tmp_path, "--steps", "6"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exported encoder embeds a clip as (1, 320)" in result.stdout


def test_sigterm_to_the_process_group_saves_a_checkpoint_and_the_run_resumes_from_it(log_mel_list, tmp_path):
    output = tmp_path / "interrupted"
    arguments = pretrain_args(log_mel_list, output, 1000, "--save-every", "1000", "--no-progress")[1:]
    arguments += ["--num-workers", "2"]
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "resp_hf.training.pretrain", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    for line in process.stdout:
        if line.startswith("step 2/"):
            os.killpg(process.pid, signal.SIGTERM)  # as Slurm's scancel: the DataLoader workers get it too
            break
    rest = process.stdout.read()
    assert process.wait(timeout=300) == 128 + signal.SIGTERM, rest
    assert "Interrupted: saved step" in rest
    (checkpoint,) = saved_checkpoints(output)
    step = int(checkpoint.removeprefix("step-"))
    assert step >= 2 and not (output / "encoder").exists()
    written = set(os.listdir(output / "checkpoints" / checkpoint))
    assert {"model.safetensors", "optimizer.bin", "train_state.json", "checkpoint.json"} <= written
    assert not any(name.startswith("custom_checkpoint") for name in written)  # nothing the resume would unpickle
    (output / "checkpoints" / f"step-{step + 100}.partial").mkdir()  # a save that did not finish is not resumed
    assert cli_main(pretrain_args(log_mel_list, output, step + 2, "--resume", "latest")) == 0
    assert max(logged_losses(output)) == step + 2 and (output / "encoder" / "model.safetensors").is_file()


def test_a_stop_request_as_an_epoch_ends_still_saves_the_step(log_mel_list, tmp_path, monkeypatch):
    iterate = DataLoaderShard.__iter__

    def iterate_then_request_a_stop(self):
        yield from iterate(self)
        os.kill(os.getpid(), signal.SIGTERM)  # after the last step's checks, as the loader shuts down

    monkeypatch.setattr(DataLoaderShard, "__iter__", iterate_then_request_a_stop)
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 100, "--save-every", "100")) == 143  # 128 + SIGTERM
    assert saved_checkpoints(output) == ["step-4"]  # 32 clips in batches of 8: 4 steps an epoch
    monkeypatch.undo()
    assert cli_main(pretrain_args(log_mel_list, output, 6, "--resume", "latest")) == 0
    assert [int(row["step"]) for row in logged_rows(output)] == [1, 2, 3, 4, 5, 6]
    assert (output / "encoder" / "model.safetensors").is_file()


def test_negative_norm_stats_in_the_documented_form(log_mel_list, tmp_path):
    arguments = pretrain_args(log_mel_list, tmp_path / "run", 1, "--norm-stats=-7.1,4.2")
    assert cli_main(arguments) == 0
    config = json.loads((tmp_path / "run" / "encoder" / "config.json").read_text())
    assert (config["norm_mean"], config["norm_std"]) == (-7.1, 4.2)


def cpu_lacks_bf16_instructions():
    """An x86 CPU without AVX-512 BF16 or AMX, from the kernel's CPU flags (Linux)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return not set(Path("/proc/cpuinfo").read_text().split()) & {"avx512_bf16", "amx_tile"}


def test_bf16_mixed_precision_and_gradient_accumulation(log_mel_list, tmp_path):
    arguments = pretrain_args(
        log_mel_list,
        tmp_path / "bf16",
        3,
        "--mixed-precision",
        "bf16",
        "--gradient-accumulation-steps",
        "2",
        "--no-progress",
        "--cpu",
    )[1:]
    # A fresh process: Accelerate keeps one precision per process.
    result = subprocess.run(
        [sys.executable, "-m", "resp_hf.training.pretrain", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effective batch 16" in result.stdout
    assert ("bf16 is emulated on this CPU" in result.stdout) == cpu_lacks_bf16_instructions()
    losses = logged_losses(tmp_path / "bf16")
    assert sorted(losses) == [1, 2, 3] and all(0 < loss < 4 for loss in losses.values())
    assert (tmp_path / "bf16" / "encoder" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    return write_two_class_recordings(tmp_path_factory.mktemp("sources") / "audio", per_class=5, seed=1)


@pytest.fixture(scope="module")
def saved_dataset(recordings):
    """A `save_to_disk` DatasetDict of the recordings (train: breath, test: wheeze) with an `Audio` column `sound`."""
    splits = DatasetDict(
        {
            split: Dataset.from_dict({"sound": sorted(map(str, (recordings / name).glob("*.wav")))}).cast_column(
                "sound", Audio()
            )
            for split, name in (("train", "breath"), ("test", "wheeze"))
        }
    )
    folder = recordings.parent / "dataset"
    splits.save_to_disk(str(folder))
    return folder


def test_file_sources_read_csv_lists_and_folders_with_repetition(recordings, tmp_path):
    wheeze = sorted(str(p) for p in (recordings / "wheeze").glob("*.wav"))
    (tmp_path / "list.csv").write_text("path\n" + "\n".join(wheeze) + "\n")
    assert read_source(f"{tmp_path / 'list.csv'}:3") == wheeze * 3
    assert read_source(recordings / "wheeze") == wheeze
    (tmp_path / "bad.csv").write_text("file\nx.wav\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        read_source(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no audio"):
        read_source(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_source(tmp_path / "missing.csv:2")
    with pytest.raises(ValueError, match="at least 1"):
        read_source(f"{recordings / 'wheeze'}:0")


def test_dataset_sources_give_the_same_log_mel_as_the_files(recordings, saved_dataset):
    train = read_source(saved_dataset, audio_column="sound")
    test = read_source(f"{saved_dataset}@test:2", audio_column="sound")
    assert len(train) == 5 and len(test) == 10
    config = RespM2DConfig(**TINY)
    units = LogMelUnits(test + train, config)
    wheeze = sorted(str(p) for p in (recordings / "wheeze").glob("*.wav"))
    breath = sorted(str(p) for p in (recordings / "breath").glob("*.wav"))
    for item, path in zip(test[5:] + train, wheeze + breath):
        torch.testing.assert_close(units.log_mel(item), units.log_mel(path), atol=0, rtol=0)
    with pytest.raises(ValueError, match="no split 'validation'.*'train', 'test'"):
        read_source(f"{saved_dataset}@validation", audio_column="sound")
    with pytest.raises(ValueError, match="no column 'audio'.*--audio-column"):
        read_source(saved_dataset)


def test_pretraining_on_a_saved_dataset_mixed_with_a_file_list(saved_dataset, log_mel_list, tmp_path):
    arguments = pretrain_args(f"{saved_dataset}@test:2", tmp_path / "run", 2, "--audio-column", "sound")
    arguments += ["--data", str(log_mel_list), "--norm-stats", "compute"]
    assert cli_main(arguments) == 0
    assert sorted(logged_losses(tmp_path / "run")) == [1, 2]
    config = json.loads((tmp_path / "run" / "encoder" / "config.json").read_text())
    assert config["norm_mean"] != TINY["norm_mean"]  # computed over the dataset rows and the files


def test_the_m2d_resp_recipe_sets_the_papers_values_and_explicit_options_win():
    args = pretrain.parse_args(["--recipe", "m2d-resp", "--data", "mixture.csv", "--output-dir", "run"])
    values = {key: getattr(args, key) for key in vars(args)}
    assert (
        values
        | {
            "init": "m2d_vit_base-80x608p16x16-221006-mr7/checkpoint-300.pth",
            "epochs": 50,
            "effective_batch_size": 2048,
            "base_lr": 3e-4,
            "warmup_epochs": 20.0,
            "clip_grad": 3.0,
            "mixed_precision": "fp16",
            "mask_ratio": 0.7,
            "ema_start": 0.99995,
            "ema_end": 0.99999,
            "weight_decay": 0.05,
            "norm_stats": "compute",
            "norm_stats_crops": 5000,
            "min_seconds": 6.1,
            "predictor_width": 512,
            "predictor_depth": 8,
            "predictor_heads": 16,
        }
        == values
    )
    args = pretrain.parse_args(["--recipe", "m2d-resp", "--data", "x.csv", "--output-dir", "run", "--epochs", "3"])
    assert args.epochs == 3 and args.clip_grad == 3.0
    plain = pretrain.parse_args(["--init", "scratch", "--data", "x.csv", "--output-dir", "run"])
    defaults = (plain.clip_grad, plain.min_seconds, plain.effective_batch_size, plain.mixed_precision)
    assert defaults == (None, 0.0, None, "no")
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--data", "x.csv", "--output-dir", "run"])  # --init is required without a recipe


def test_the_effective_batch_size_sets_gradient_accumulation():
    args = pretrain.parse_args(["--recipe", "m2d-resp", "--data", "x.csv", "--output-dir", "r", "--batch-size", "64"])
    assert pretrain.gradient_accumulation_steps(args, num_processes=4) == 8  # 2048 = 64 x 4 x 8
    assert pretrain.gradient_accumulation_steps(args, num_processes=1) == 32
    args.batch_size = 48
    with pytest.raises(ValueError, match=r"--effective-batch-size 2048 is not a multiple of --batch-size 48 x 1"):
        pretrain.gradient_accumulation_steps(args, num_processes=1)


def test_gradient_clipping_warmup_in_epochs_and_the_ema_schedule(log_mel_list, tmp_path, monkeypatch):
    norms = []
    step = torch.optim.AdamW.step

    def record_gradient_norm(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record_gradient_norm)
    extra = ["--warmup-epochs", "1", "--ema-start", "0.9", "--ema-end", "0.99"]
    assert cli_main(pretrain_args(log_mel_list, tmp_path / "free", 6, *extra)) == 0
    assert max(norms) > 0.05  # without clipping the gradients are larger than the limit tested next
    norms.clear()
    assert cli_main(pretrain_args(log_mel_list, tmp_path / "clipped", 6, *extra, "--clip-grad", "0.05")) == 0
    assert len(norms) == 6 and max(norms) <= 0.05 * (1 + 1e-5)
    # 32 clips in batches of 8: 4 steps an epoch, so 1 warm-up epoch is 4 steps; then cosine to 0 at step 6.
    peak = 1e-2 * 8 / 256
    for row in logged_rows(tmp_path / "clipped"):
        k = int(row["step"])
        expected = peak * k / 4 if k < 4 else peak * 0.5 * (1 + math.cos(math.pi * (k - 4) / 2))
        assert float(row["lr"]) == pytest.approx(expected, abs=1e-12), k
        # M2D's ema_decay_sched: init + (end - init) * step / (total_steps - 1), step counted from 0
        assert float(row["ema_decay"]) == pytest.approx(0.9 + 0.09 * (k - 1) / 5, abs=1e-12), k


def test_norm_stats_come_from_random_unit_size_crops(tmp_path):
    config = RespM2DConfig(**TINY)  # 96-frame units
    ramp = np.arange(80 * 500, dtype=np.float32).reshape(80, 500) % 500  # each row counts the frames 0..499
    np.save(tmp_path / "ramp.npy", ramp)
    dataset = LogMelUnits([str(tmp_path / "ramp.npy")], config)
    for seed in range(5):
        mean, std = norm_stats_from_crops(dataset, count=1, seed=seed)
        start = mean - 95 / 2  # one crop of the frames start .. start + 95
        assert start == pytest.approx(round(start), abs=1e-6) and 0 <= round(start) <= 500 - 96 - 1
        assert std == pytest.approx(float(torch.arange(96.0).repeat(80).std()), rel=1e-6)
    # Short clips are zero-padded to the unit before the statistics, as M2D pads its log-mel crops.
    np.save(tmp_path / "short.npy", np.full((80, 48), 2.0, dtype=np.float32))
    mean, std = norm_stats_from_crops(LogMelUnits([str(tmp_path / "short.npy")], config), count=3)
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(float(torch.tensor([2.0] * 48 + [0.0] * 48).repeat(3 * 80).std()), rel=1e-6)


@pytest.mark.parametrize("seconds", ["inf", "nan", "-1", "1e12"])
def test_min_seconds_outside_0_to_600_is_refused_before_anything_is_written(recordings, tmp_path, capsys, seconds):
    output = tmp_path / "lms"
    assert cli_main(["logmel", str(recordings / "breath"), str(output), "--min_seconds", seconds]) == 2
    assert f"min_seconds must be a number from 0 to 600 (M2D: 6.1), got {float(seconds)!r}" in capsys.readouterr().err
    assert not output.exists()
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--data", "x.csv", "--output-dir", str(output), "--min_seconds", seconds])
    assert "argument --min_seconds: min_seconds must be a number from 0 to 600" in capsys.readouterr().err
    with pytest.raises(ValueError, match="min_seconds must be a number from 0 to 600"):
        LogMelUnits([], RespM2DConfig(**TINY), min_seconds=float(seconds))


@pytest.mark.parametrize(
    "option, value, problem",
    [
        ("--max_grad_norm", "-1", "must be a finite number above 0, got -1"),  # torch would flip the gradients
        ("--max_grad_norm", "0", "must be a finite number above 0, got 0"),
        ("--base_lr", "nan", "must be a finite number above 0, got nan"),
        ("--weight_decay", "-0.05", "must be a finite number of at least 0, got -0.05"),
        ("--warmup_epochs", "-3", "must be a finite number of at least 0, got -3"),
        ("--warmup_epochs", "inf", "must be a finite number of at least 0, got inf"),
        ("--ema_start", "2", "must be a number from 0 to 1, got 2"),
        ("--ema_end", "-0.1", "must be a number from 0 to 1, got -0.1"),
        ("--mask_ratio", "1.5", "must be a number above 0 and below 1, got 1.5"),
        ("--mask_ratio", "0", "must be a number above 0 and below 1, got 0"),
        ("--predictor_width", "0", "must be at least 1, got 0"),
        ("--predictor_depth", "0", "must be at least 1, got 0"),
        ("--predictor_heads", "-4", "must be at least 1, got -4"),
        ("--norm_stats_crops", "0", "must be at least 1, got 0"),
        ("--per_device_train_batch_size", "-2", "must be at least 1, got -2"),
        ("--gradient_accumulation_steps", "0", "must be at least 1, got 0"),
        ("--effective_batch_size", "-64", "must be at least 1, got -64"),
        ("--num_train_epochs", "0", "must be at least 1, got 0"),  # would export the untrained encoder
        ("--max_steps", "-1", "must be at least 1, got -1"),
        ("--save_steps", "0", "must be at least 1, got 0"),
        ("--logging_steps", "0", "must be at least 1, got 0"),
        ("--dataloader_num_workers", "-1", "must be at least 0, got -1"),
    ],
)
def test_harmful_numbers_are_refused_naming_the_option_before_anything_is_written(
    tmp_path, capsys, option, value, problem
):
    output = tmp_path / "run"
    arguments = ["pretrain", "--init", "scratch", "--data", "x.csv", "--output-dir", str(output), option, value]
    with pytest.raises(SystemExit) as exit:
        cli_main(arguments)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error == f"resp-hf pretrain: error: argument {option}: {problem} (see `resp-hf pretrain --help`)\n"
    assert not output.exists()


def test_a_mask_ratio_that_leaves_no_patch_visible_for_the_model_is_refused_before_training(
    log_mel_list, tmp_path, capsys
):
    output = tmp_path / "run"  # the tiny encoder has 5 x 6 patches: 0.97 keeps int(30 * 0.03) = 0
    assert cli_main(pretrain_args(log_mel_list, output, 2, "--mask-ratio", "0.97", *SMALL_PREDICTOR)) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "resp-hf pretrain: error: mask_ratio=0.97 leaves 0 of 30 patches visible."
    )
    assert not output.exists()  # no TensorBoard logs, no folder to resume from


def test_a_failed_runs_folder_is_refused_advising_resume_only_when_it_holds_a_checkpoint(tmp_path, capsys):
    output = tmp_path / "run"
    (output / "pretrain").mkdir(parents=True)  # the TensorBoard logs of a run that failed before its first save
    arguments = ["pretrain", "--init", "scratch", "--data", "x.csv", "--output-dir", str(output)]
    assert cli_main(arguments) == 2
    assert capsys.readouterr().err == (
        f"resp-hf pretrain: error: The output folder {output} is not empty; it already holds pretrain: pass "
        "--overwrite to replace it, or choose another folder.\n"
    )
    (output / "checkpoints" / "step-2").mkdir(parents=True)
    assert cli_main(arguments) == 2
    assert "pass --resume latest to continue it, or --overwrite to replace it" in capsys.readouterr().err


def test_audio_shorter_than_min_seconds_is_zero_padded_before_the_log_mel(recordings, tmp_path):
    config = RespM2DConfig(**TINY)
    path = sorted((recordings / "breath").glob("*.wav"))[0]
    audio, rate = soundfile.read(path, dtype="float32")
    assert len(audio) < 6.1 * rate
    padded = np.concatenate([audio, np.zeros(int(6.1 * rate) - len(audio), dtype=np.float32)])
    extractor = RespM2DFeatureExtractor.from_model_config(config)
    extractor.mean, extractor.std = 0.0, 1.0
    expected = extractor(padded, sampling_rate=rate)["input_features"][0]
    features = LogMelUnits([str(path)], config, min_seconds=6.1).log_mel(str(path))
    assert features.shape[1] == 611  # 6.1 s at a 10 ms hop, centred frames
    torch.testing.assert_close(features, expected, atol=0, rtol=0)
    assert LogMelUnits([str(path)], config).log_mel(str(path)).shape[1] < 611
    assert cli_main(["logmel", str(recordings / "breath"), str(tmp_path / "lms"), "--min-seconds", "6.1"]) == 0
    stored = np.load(tmp_path / "lms" / path.with_suffix(".npy").name)
    np.testing.assert_array_equal(stored, expected.numpy())


def test_an_earlier_run_folder_is_refused_unless_resume_or_overwrite(log_mel_list, tmp_path, capsys):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 2)) == 0
    capsys.readouterr()
    assert cli_main(pretrain_args(log_mel_list, output, 2)) == 2
    error = capsys.readouterr().err.strip()
    assert f"{output} is not empty" in error and "--overwrite" in error and len(error.splitlines()) == 1
    assert [int(row["step"]) for row in logged_rows(output)] == [1, 2]  # the earlier log is untouched
    (output / "notes.txt").write_text("mine")
    assert cli_main(pretrain_args(log_mel_list, output, 3, "--overwrite")) == 0
    assert [int(row["step"]) for row in logged_rows(output)] == [1, 2, 3]  # a fresh log, not appended
    assert saved_checkpoints(output) == ["step-3"] and (output / "notes.txt").read_text() == "mine"
    assert cli_main(pretrain_args(log_mel_list, output, 3, "--overwrite", "--resume", "latest")) == 2
    assert "pass only one" in capsys.readouterr().err


def test_logmel_refuses_an_earlier_output_folder_unless_overwrite(recordings, tmp_path, capsys):
    output = tmp_path / "lms"
    assert cli_main(["logmel", str(recordings / "wheeze"), str(output)]) == 0
    first = (output / "files.csv").read_text()
    assert cli_main(["logmel", str(recordings / "breath"), str(output)]) == 2
    assert "is not empty" in capsys.readouterr().err and (output / "files.csv").read_text() == first
    assert cli_main(["logmel", str(recordings / "breath"), str(output), "--overwrite"]) == 0
    assert "breath" in (output / "files.csv").read_text() and not list(output.glob("wheeze*"))
    mode = 0o666 & ~current_umask()
    assert {path.stat().st_mode & 0o777 for path in output.iterdir()} == {mode}


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Payload:
    """Unpickling this runs `os.system`: a stand-in for a crafted pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_the_checkpoint_is_not_executed_on_resume(log_mel_list, tmp_path, monkeypatch, capsys):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 4, "--save-every", "2")) == 0
    straight = logged_losses(output)
    checkpoint = output / "checkpoints" / "step-2"
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # no project state that Accelerate would unpickle
    loads = []
    load = torch.load

    def record_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", record_load)
    assert cli_main(pretrain_args(log_mel_list, output, 4, "--resume", str(checkpoint))) == 0
    assert loads and all(weights_only is True for weights_only in loads)  # optimizer and random states only
    assert all(logged_losses(output)[step] == pytest.approx(straight[step], abs=1e-6) for step in (3, 4))

    marker = tmp_path / "code_was_executed"
    crafted = checkpoint / "custom_checkpoint_0.pkl"  # what Accelerate unpickles with weights_only=False
    torch.save(Payload(marker), crafted)
    capsys.readouterr()
    assert cli_main(pretrain_args(log_mel_list, output, 4, "--resume", str(checkpoint))) == 2
    assert f"{crafted} was not saved with the checkpoint" in capsys.readouterr().err
    crafted.unlink()
    torch.save(Payload(marker), checkpoint / "random_states_0.pkl")  # a listed file replaced
    assert cli_main(pretrain_args(log_mel_list, output, 4, "--resume", str(checkpoint))) == 2
    assert "random_states_0.pkl is truncated or altered" in capsys.readouterr().err
    assert not marker.exists()

    # A replaced file with its manifest entry rewritten to match: refused by the weights-only load, in one line.
    (checkpoint / "random_states_0.pkl").unlink()
    optimizer = checkpoint / "optimizer.bin"
    torch.save(Payload(marker), optimizer)
    manifest = json.loads((checkpoint / "checkpoint.json").read_text())
    manifest["files"].pop("random_states_0.pkl")
    manifest["files"]["optimizer.bin"] = {"size": optimizer.stat().st_size, "sha256": file_sha256(optimizer)}
    (checkpoint / "checkpoint.json").write_text(json.dumps(manifest))
    assert cli_main(pretrain_args(log_mel_list, output, 4, "--resume", str(checkpoint))) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"resp-hf pretrain: error: {checkpoint} holds a file that is not plain tensors, which is")
    assert not marker.exists()


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(log_mel_list, tmp_path, caplog, capsys):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 3, "--save-every", "1")) == 0
    straight = logged_losses(output)
    damaged = output / "checkpoints" / "step-3" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with caplog.at_level("WARNING"):
        assert cli_main(pretrain_args(log_mel_list, output, 3, "--resume", "latest")) == 0
    assert f"{damaged} is truncated" in caplog.text and "Resuming from" in caplog.text
    assert str(output / "checkpoints" / "step-2") in caplog.text
    assert logged_losses(output)[3] == pytest.approx(straight[3], abs=1e-6)
    for step in (1, 2, 3):  # every checkpoint damaged: an error naming the files
        (output / "checkpoints" / f"step-{step}" / "optimizer.bin").write_bytes(b"")
    capsys.readouterr()
    assert cli_main(pretrain_args(log_mel_list, output, 3, "--resume", "latest")) == 2
    error = capsys.readouterr().err
    assert "No undamaged checkpoint" in error and f"{output / 'checkpoints' / 'step-1' / 'optimizer.bin'}" in error


def test_a_run_with_the_recipe_scaled_down_to_a_tiny_encoder(recordings, tmp_path, capsys):
    output = tmp_path / "run"
    arguments = ["pretrain", "--recipe", "m2d-resp", "--init", "scratch", "--encoder-config", json.dumps(TINY)]
    arguments += ["--data", f"{recordings}:2", "--output-dir", str(output), "--epochs", "2", "--batch-size", "8"]
    arguments += ["--effective-batch-size", "16", "--mixed-precision", "no", "--norm-stats-crops", "20"]
    arguments += ["--num-workers", "0", "--no-progress", "--log-every", "1", *SMALL_PREDICTOR]
    assert cli_main(arguments) == 0
    printed = capsys.readouterr().out
    assert "20 clips, effective batch 16, lr 1.87e-05, 2 steps" in printed  # 3e-4 x 16 / 256; 20 // 8 batches / 2
    assert sorted(logged_losses(output)) == [1, 2]
    config = json.loads((output / "encoder" / "config.json").read_text())
    dataset = LogMelUnits(read_source(f"{recordings}:2"), RespM2DConfig(**TINY), min_seconds=6.1)
    assert (config["norm_mean"], config["norm_std"]) == pytest.approx(norm_stats_from_crops(dataset, 20, seed=0))


def test_a_nan_npy_log_mel_read_by_a_worker_stops_pretraining_with_an_error_naming_it(log_mel_list, tmp_path):
    paths = read_source(log_mel_list)[:8]
    damaged = tmp_path / "nan.npy"
    np.save(damaged, np.full((80, 200), np.nan, dtype=np.float32))
    (tmp_path / "list.csv").write_text("path\n" + "\n".join([*paths[:7], str(damaged)]) + "\n")
    arguments = pretrain_args(tmp_path / "list.csv", tmp_path / "run", 2, "--no-progress", "--num-workers", "2")
    # A fresh process, which must end: the workers ignore SIGTERM, so a worker's error used to leave them running.
    result = subprocess.run(
        [sys.executable, "-m", "resp_hf.cli", *arguments], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        error
        == f"resp-hf pretrain: error: {damaged} holds NaN or Inf values: the log-mel is damaged; compute it again."
    )
    assert not (tmp_path / "run" / "encoder").exists()


class ClipsWithOneFault(torch.utils.data.Dataset):
    """Two readable clips, then one whose reading fails with `error` (a bug for TypeError, bad data for ValueError)."""

    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 3

    def __getitem__(self, index):
        if index == 2:
            read_the_faulty_clip(self.error)
        return torch.zeros(80, 16)


def read_the_faulty_clip(error):
    raise error("the third clip")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_workers_unexpected_error_reaches_the_main_process_with_the_workers_traceback(workers):
    arguments = argparse.Namespace(batch_size=1, num_workers=workers, seed=0)
    for error, noted in ((TypeError, workers > 0), (ValueError, False)):
        batches = list(pretrain.training_loader(ClipsWithOneFault(error), arguments))
        [raised] = [batch for batch in batches if isinstance(batch, Exception)]
        assert type(raised) is error and str(raised) == "the third clip" and len(batches) == 3
        notes = getattr(raised, "__notes__", [])
        if noted:  # the frame that raised it, which pickling the error to the main process drops
            [note] = notes
            assert note.startswith("Raised in a DataLoader worker:\nTraceback") and "read_the_faulty_clip" in note
        else:  # bad data gets its one-line message; in the main process the traceback is the error's own
            assert notes == []


def test_a_non_finite_loss_stops_training_before_the_weights_change(log_mel_list, tmp_path, monkeypatch, capsys):
    losses = []

    def nan_at_the_third_step(*args, **kwargs):
        losses.append(m2d_loss(*args, **kwargs))
        return losses[-1] * float("nan") if len(losses) == 3 else losses[-1]

    monkeypatch.setattr(pretraining_model, "m2d_loss", nan_at_the_third_step)
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 4, "--save-every", "2", "--no-progress")) == 2
    error = capsys.readouterr().err.strip()
    assert "error: The loss is NaN or Inf at step 3: training stopped before that step changed the weights" in error
    assert len(error.splitlines()) == 1 and len(losses) == 3
    assert sorted(logged_losses(output)) == [1, 2] and saved_checkpoints(output) == ["step-2"]
    assert not (output / "encoder").exists()


def test_resuming_another_runs_checkpoint_into_a_run_folder_needs_overwrite(log_mel_list, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli_main(pretrain_args(log_mel_list, first, 4, "--save-every", "2")) == 0
    assert cli_main(pretrain_args(log_mel_list, second, 4, "--save-every", "2", "--seed", "1")) == 0
    before = {path: path.read_bytes() for path in second.rglob("*") if path.is_file()}
    checkpoint = first / "checkpoints" / "step-2"
    capsys.readouterr()
    assert cli_main(pretrain_args(log_mel_list, second, 4, "--resume", str(checkpoint))) == 2
    error = capsys.readouterr().err.strip()
    assert f"Cannot resume {checkpoint}, which is not in --output-dir: The output folder {second} is not empty" in error
    assert "pass --overwrite to replace it" in error and len(error.splitlines()) == 1
    other_seed = pretrain_args(log_mel_list, second, 4, "--resume", str(checkpoint), "--overwrite", "--seed", "1")
    assert cli_main(other_seed) == 2  # refused before the earlier run is removed
    assert {path: path.read_bytes() for path in second.rglob("*") if path.is_file()} == before
    assert cli_main(pretrain_args(log_mel_list, second, 4, "--resume", str(checkpoint), "--overwrite")) == 0
    assert saved_checkpoints(second) == ["step-4"]  # the second run's checkpoints are gone, none set aside
    resumed, straight = logged_losses(second), logged_losses(first)
    assert sorted(resumed) == [3, 4] and all(resumed[s] == pytest.approx(straight[s], abs=1e-6) for s in (3, 4))


def test_resuming_with_other_settings_is_refused_naming_them(log_mel_list, tmp_path, capsys):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 2)) == 0
    checkpoint = output / "checkpoints" / "step-2"
    other_encoder = json.dumps({**TINY, "hidden_size": 32, "intermediate_size": 64})
    for extra, differ in [
        (["--encoder-config", other_encoder], "encoder.hidden_size 32 (saved: 64), encoder.intermediate_size 64"),
        (["--predictor-width", "64"], "predictor_width 64 (saved: 32)"),
        (["--batch-size", "4"], "batch_size 4 (saved: 8)"),
        (["--mask-ratio", "0.6", "--seed", "1"], "mask_ratio 0.6 (saved: 0.7), seed 1 (saved: 0)"),
        (["--warmup-epochs", "1", "--norm-stats=-7,5"], "encoder.norm_mean -7.0 (saved: -6.0), encoder.norm_std 5.0"),
    ]:
        capsys.readouterr()
        assert cli_main(pretrain_args(log_mel_list, output, 2, "--resume", "latest", *extra)) == 2, extra
        error = capsys.readouterr().err.strip()
        assert f"Cannot resume from {checkpoint}: it was saved with other settings" in error and differ in error
        assert len(error.splitlines()) == 1
    assert "warmup_epochs 1.0 (saved: 0.5)" in error
    assert cli_main(pretrain_args(log_mel_list, output, 3, "--resume", "latest")) == 0  # a longer run is not refused
    assert "3 steps instead of the 2 the saved run planned" in capsys.readouterr().out


def test_a_checkpoint_that_records_no_settings_is_resumed_with_a_note(log_mel_list, tmp_path, capsys):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 2)) == 0
    checkpoint = output / "checkpoints" / "step-2"
    state_path, manifest_path = checkpoint / pretrain.TRAIN_STATE_FILE, checkpoint / pretrain.MANIFEST_FILE
    state = json.loads(state_path.read_text())
    del state["settings"]  # as written before checkpoints recorded their settings
    state_path.write_text(json.dumps(state))
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][state_path.name] = {"size": state_path.stat().st_size, "sha256": file_sha256(state_path)}
    manifest_path.write_text(json.dumps(manifest))
    assert cli_main(pretrain_args(log_mel_list, output, 3, "--resume", "latest")) == 0
    assert f"{checkpoint} records no settings (an earlier resp_hf saved it)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda text: "", "its first line is '', not 'step,epoch,loss,lr,ema_decay,samples_per_second'"),
        (lambda text: "\x00\x01garbage\nxx,yy\n", r"its first line is '\x00\x01garbage'"),
        (lambda text: text[:3], "its first line is 'ste'"),
        (lambda text: text.replace("\n2,", "\nx,", 1), "line 3 is not 6 numbers"),
        (lambda text: text.rstrip("\n").rsplit(",", 1)[0], "line 3 is not 6 numbers"),
    ],
    ids=["empty", "garbage", "header_cut", "bad_step", "row_cut"],
)
def test_a_damaged_training_log_is_named_before_a_resumed_run_trains(log_mel_list, tmp_path, capsys, damage, problem):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 2, "--save-every", "1")) == 0
    log = output / "training_log.csv"
    log.write_text(damage(log.read_text()))
    damaged = log.read_text()
    capsys.readouterr()
    assert cli_main(pretrain_args(log_mel_list, output, 3, "--resume", "latest")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"resp-hf pretrain: error: {log} is damaged ({problem}")
    assert error.endswith("): repair or remove it.") and len(error.splitlines()) == 1
    assert log.read_text() == damaged and saved_checkpoints(output) == ["step-1", "step-2"]


def test_an_output_folder_that_holds_the_init_model_or_the_data_is_refused(log_mel_list, tmp_path, capsys):
    output = tmp_path / "run"
    assert cli_main(pretrain_args(log_mel_list, output, 1)) == 0
    init = ["--init", str(output / "encoder")]
    assert cli_main(pretrain_args(log_mel_list, output, 1, "--overwrite", *init)) == 2
    assert f"--output-dir {output} is or holds the input {output / 'encoder'}" in capsys.readouterr().err
    assert (output / "encoder" / "model.safetensors").is_file()
    shutil.copy(log_mel_list, output / "files.csv")
    assert cli_main(pretrain_args(f"{output / 'files.csv'}:2", output, 1, "--overwrite")) == 2
    assert f"is or holds the input {output / 'files.csv'}" in capsys.readouterr().err
    assert cli_main(pretrain_args(log_mel_list, tmp_path / "next", 1, *init)) == 0  # from the exported encoder
