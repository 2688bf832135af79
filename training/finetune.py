"""Fine-tune a resp_hf encoder with Trainer; the same as `resp-hf finetune` (see `--help`).

python training/finetune.py --model_name_or_path ./resp-m2d --dataset ./my_recordings --output_dir ./out
"""

import sys

from resp_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
