"""Further pre-training with the M2D objective; the same as `resp-hf pretrain` (see `--help`).

accelerate launch training/pretrain.py --init CHECKPOINT --data LIST.csv --output-dir OUT
"""

import sys

from resp_hf.training.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
