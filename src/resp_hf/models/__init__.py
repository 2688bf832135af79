"""Model folders (flat, self-contained: copied as remote code into saved checkpoints)."""
