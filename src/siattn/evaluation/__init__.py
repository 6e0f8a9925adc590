"""Long-context evaluation: loss by length and by position, needle in a haystack, passkey retrieval.

    from siattn.evaluation import loss_at_lengths, NeedleTask, PasskeyTask, finetune, evaluate_retrieval

    res = loss_at_lengths(model, ds.val, [512, 2048, 8192], n_tokens=1 << 16)      # {length: LengthLoss}
    task = NeedleTask(ds.val, ds.tokenizer)                                      # validation haystacks
    finetune(model, NeedleTask(ds.train, ds.tokenizer), length=512, train_config=cfg)   # 100/100/100 steps
    acc = evaluate_retrieval(model, task, [512, 2048, 8192], trials=100, decode=ds.tokenizer.decode)

The command-line recipes are ``siattn eval`` (:mod:`siattn.recipes.evaluate`) and ``siattn needle``
(:mod:`siattn.recipes.needle`).
"""

from siattn.evaluation.checkpoints import Checkpoint, load_checkpoints, load_for_eval
from siattn.evaluation.cities import CITIES
from siattn.evaluation.lengths import eval_lengths
from siattn.evaluation.loss_by_length import LengthLoss, bin_by_position, log_bin_edges, loss_at_length, loss_at_lengths
from siattn.evaluation.needle import (
    Needle,
    NeedleScore,
    NeedleTask,
    RetrievalExample,
    decoding_model,
    depth_accuracy,
    evaluate_length,
    evaluate_retrieval,
    finetune,
    greedy_decode,
    make_needle_example,
    parse_answer,
    score_needle_answer,
)
from siattn.evaluation.passkey import PasskeyTask, make_passkey_example, score_passkey
from siattn.training.validation import per_token_losses, scored_tokens

__all__ = [
    "CITIES",
    "Checkpoint",
    "LengthLoss",
    "Needle",
    "NeedleScore",
    "NeedleTask",
    "PasskeyTask",
    "RetrievalExample",
    "bin_by_position",
    "decoding_model",
    "depth_accuracy",
    "eval_lengths",
    "evaluate_length",
    "evaluate_retrieval",
    "finetune",
    "greedy_decode",
    "load_checkpoints",
    "load_for_eval",
    "log_bin_edges",
    "loss_at_length",
    "loss_at_lengths",
    "make_needle_example",
    "make_passkey_example",
    "parse_answer",
    "per_token_losses",
    "score_needle_answer",
    "score_passkey",
    "scored_tokens",
]
