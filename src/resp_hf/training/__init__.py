"""Training entry points: fine-tuning with Trainer (and, later, further pre-training with Accelerate)."""
