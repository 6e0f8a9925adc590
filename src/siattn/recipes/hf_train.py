r"""``siattn hf-train``: continual pre-training of a transformers model, converted to si-p-rope or kept as the
RoPE baseline, with the loss by length before and after (:mod:`siattn.hf.continual`).

    siattn data prepare my-text/ --tokenizer hf:path/to/model --out data_cache/my-text-model
    siattn hf-train --model path/to/model --data data_cache/my-text-model --seq-len 1024 --steps 200 --out runs/si
    siattn hf-train --model path/to/model --data data_cache/my-text-model --seq-len 1024 --steps 200 \
        --method rope --out runs/rope
"""

from __future__ import annotations

import argparse

from siattn.hf.continual import ContinualConfig
from siattn.recipes.arguments import Command

HELP = "Continual pre-training of a transformers model with siattn (transformers' Trainer), loss by length."


def main(cfg: ContinualConfig, _: argparse.Namespace | None = None) -> int:
    from siattn.errors import check_output_folder
    from siattn.hf.continual import continual_pretrain

    check_output_folder("--out", cfg.out)
    result = continual_pretrain(cfg)
    rows = [f"  {length:>7}: {result['before'][str(length)]:.4f} -> {result['after'][str(length)]:.4f}"
            for length in result["lengths"]]
    print("validation loss (nats/token), before -> after:\n" + "\n".join(rows))
    print(f"wrote {cfg.out}/result.json and the model in {cfg.out}/model")
    return 0


COMMAND = Command(HELP, ContinualConfig, main, description=__doc__)
