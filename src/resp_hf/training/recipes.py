"""
Named pre-training recipes for `resp-hf pretrain --recipe NAME`: each sets the defaults of a published run; options
given on the command line still win.

Sources: nttcslab/m2d at f0c4128 (`patch_m2d.diff`: the patched `train_audio.py` and `m2d/engine_pretrain_m2d.py`;
`audio_dataset.py`; `wav_to_lms.py`) and the M2D+Resp paper (Niizumi et al., Interspeech 2025) for what the
repository does not hold (the starting checkpoint, the 50 epochs and the AudioSet + respiratory mixture).
"""

M2D_RESP = {
    # Paper: further pre-training resumes from the AudioSet M2D/0.7 release.
    "init": "m2d_vit_base-80x608p16x16-221006-mr7/checkpoint-300.pth",
    # Paper: 50 epochs on AudioSet + the respiratory set x29 (build the list with `resp-hf pretrain-data`).
    "epochs": 50,
    # train_audio.py: `eff_batch_size` 2048 (arg_conf_defaults), `--blr 3e-4`, lr = blr x effective batch / 256.
    "effective_batch_size": 2048,
    "base_lr": 3e-4,
    # train_audio.py: `--warmup_epochs 20`, `--clip_grad 3.0`, `--mask_ratio 0.7`, `--weight_decay 0.05`,
    # `--ema_decay_init 0.99995`, `--ema_decay 0.99999`; AdamW betas (0.9, 0.95) are fixed in both (get_optim).
    "warmup_epochs": 20.0,
    "clip_grad": 3.0,
    "mask_ratio": 0.7,
    "weight_decay": 0.05,
    "ema_start": 0.99995,
    "ema_end": 0.99999,
    # engine_pretrain_m2d.py: `torch.cuda.amp.autocast()` without `--bf16` is float16 autocast with a grad scaler.
    "mixed_precision": "fp16",
    # audio_dataset.py: with `--norm_stats None` the statistics are computed at the start from 10000 // 2 random crops
    # of the training list (MixedSpecDataset passes n_norm_calc // 2 to SpectrogramDataset).
    "norm_stats": "compute",
    "norm_stats_crops": 5000,
    # wav_to_lms.py: `min_length=6.1` zero-pads shorter waveforms before the log-mel.
    "min_seconds": 6.1,
    # train_audio.py `--decoder_depth 8`; models_mae.py m2d_vit_base: decoder width 512, 16 heads.
    "predictor_width": 512,
    "predictor_depth": 8,
    "predictor_heads": 16,
}

RECIPES = {"m2d-resp": M2D_RESP}
