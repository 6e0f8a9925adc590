"""Several GPU stages in one command: run on the GPU machine as
`PYTHONPATH=src python3 benchmarks/gpu_session.py STAGE ...`.

Each stage runs as a subprocess with its own time limit, its output goes to $OUT/log-STAGE.txt, and after every
stage the results so far are packed into $OUT/results.tgz (one file to copy back), so a stage that runs out of
time loses only itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "gpu-out"))
PY = sys.executable
SIATTN = [PY, "-m", "siattn"]
GPU_SMALL_DATA = "data_cache/python-all-bytes"
REPRODUCE_METHODS = ["rope", "alibi", "logn-p-rope", "si-p-rope"]


def stage_env() -> list[list[str]]:
    versions = "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__)"
    return [["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"], [PY, "-c", versions]]


def stage_tests() -> list[list[str]]:
    return [[PY, "-m", "pytest", "-q", "-m", "gpu", "tests/backends/test_backends.py", "tests/model", "-p",
             "no:cacheprovider"]]


def _gpu_small(method: str, backend: str, steps: int) -> list[str]:
    return [*SIATTN, "train", "--preset", "gpu-small", "--method", method, "--attn-backend", backend,
            "--data", GPU_SMALL_DATA, "--data-source", "python-all", "--tokenizer", "bytes", "--steps", str(steps),
            "--eval-every", str(steps), "--eval-multipliers", "1,4", "--eval-tokens", str(1 << 18),
            "--log-every", "10", "--ckpt-every", str(steps), "--out", f"runs/gpu-small-{method}-{backend}",
            "--overwrite", "--no-progress"]


def stage_train_gpu(steps: int) -> list[list[str]]:
    return [_gpu_small("p-rope", "sdpa", steps), _gpu_small("si-p-rope", "triton", steps),
            _gpu_small("si-p-rope", "flex", steps)]


def stage_train_flex(steps: int) -> list[list[str]]:
    return [_gpu_small("si-p-rope", "flex", steps)]


def _paper162m_args(steps: int, every: int, log_every: int) -> list[str]:
    """``siattn train`` arguments of the paper-162m runs: si-p-rope on the byte corpus, validation at 1/4/16×,
    validation and checkpoints every ``every`` steps."""
    return ["train", "--preset", "paper-162m", "--method", "si-p-rope", "--data", GPU_SMALL_DATA, "--data-source",
            "python-all", "--tokenizer", "bytes", "--eval-multipliers", "1,4,16", "--eval-tokens", str(1 << 16),
            "--log-every", str(log_every), "--steps", str(steps), "--eval-every", str(every), "--ckpt-every",
            str(every), "--no-progress"]


def stage_paper162m(steps: int) -> list[list[str]]:
    half = steps // 2
    base = [*SIATTN, *_paper162m_args(steps, half, log_every=5)]
    return [[*base, "--out", "runs/paper-162m-1gpu", "--overwrite"],
            # resume its step-`half` checkpoint into a second folder and finish: the two curves must agree
            [*base, "--out", "runs/paper-162m-1gpu-resumed", "--resume",
             f"runs/paper-162m-1gpu/checkpoints/step_{half:06d}"]]


def stage_multigpu(steps: int, gpus: int) -> list[list[str]]:
    """One GPU, then ``gpus`` GPUs with torchrun (same global batch), then the multi-GPU run's half-way
    checkpoint resumed on one GPU; the one-GPU commands see only device 0 (CUDA_VISIBLE_DEVICES)."""
    half = steps // 2
    one = ["env", "CUDA_VISIBLE_DEVICES=0", *SIATTN]
    multi = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), "-m", "siattn"]
    return [[*one, *_paper162m_args(half, half, log_every=2), "--out", "runs/paper-162m-1gpu", "--overwrite"],
            [*multi, *_paper162m_args(steps, half, log_every=2), "--out", f"runs/paper-162m-{gpus}gpu",
             "--overwrite"],
            [*one, *_paper162m_args(steps, half, log_every=2), "--out", f"runs/paper-162m-{gpus}gpu-resumed-1gpu",
             "--resume", f"runs/paper-162m-{gpus}gpu/checkpoints/step_{half:06d}"]]


def stage_reproduce() -> list[list[str]]:
    return [[*SIATTN, "reproduce", "--preset", "cpu-tiny", "--methods", *REPRODUCE_METHODS,
             "--runs", "runs/reproduce-cpu-tiny", "--out", "results/reproduce-cpu-tiny", "--no-progress"]]


def stage_analyze() -> list[list[str]]:
    ckpts = [f"runs/reproduce-cpu-tiny/cpu-tiny-{m}" for m in REPRODUCE_METHODS]
    return [[*SIATTN, "analyze", "model", "--checkpoint", *ckpts, "--length", "4x", "--out",
             "results/analysis-model"]]


def tokens_per_second(run: Path, skip: int = 20) -> dict:
    """Median tokens/s of the logged training windows after ``skip`` steps (start-up excluded)."""
    from siattn.training.metrics import read_metrics

    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train" and r["step"] > skip]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        return {"run": str(run), "error": "no training records after the start-up steps"}
    return {"run": str(run), "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in train),
            "windows": len(train), "final_train_loss": train[-1]["loss"],
            "val": val[-1]["loss"] if val else None}


def plot_train_curves(runs: list[Path], out: Path, title: str) -> Path:
    """Training loss against step for several runs (their metrics.jsonl), one figure."""
    from siattn.plotting import pyplot, save_figure
    from siattn.training.metrics import read_metrics

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for run in runs:
        train = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "train"]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], marker="o", ms=3, label=run.name)
    ax.set(xlabel="step", ylabel="training loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def pack() -> None:
    with tarfile.open(OUT / "results.tgz", "w:gz") as tar:
        for path in ["results", "runs"]:
            if Path(path).exists():
                tar.add(path, filter=lambda ti: None if ti.name.endswith((".safetensors", ".pt")) else ti)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stages", nargs="+", choices=["env", "tests", "train-gpu", "train-flex", "paper162m",
                                                      "multigpu", "reproduce", "analyze"])
    parser.add_argument("--multi-steps", type=int, default=30, help="steps of the multi-GPU run")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--paper-steps", type=int, default=20)
    parser.add_argument("--limit", type=int, default=560, help="seconds for all stages together")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.limit
    summary = {}
    for stage in args.stages:
        commands = {"env": stage_env, "tests": stage_tests, "reproduce": stage_reproduce, "analyze": stage_analyze,
                    "train-gpu": lambda: stage_train_gpu(args.train_steps),
                    "train-flex": lambda: stage_train_flex(args.train_steps),
                    "paper162m": lambda: stage_paper162m(args.paper_steps),
                    "multigpu": lambda: stage_multigpu(args.multi_steps, args.gpus)}[stage]()
        t0 = time.time()
        with open(OUT / f"log-{stage}.txt", "a") as log:
            for cmd in commands:
                left = deadline - time.time()
                if left < 10:
                    print(f"[{stage}] skipped: out of time", flush=True)
                    break
                log.write("$ " + " ".join(cmd) + "\n")
                log.flush()
                try:
                    code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=left).returncode
                except subprocess.TimeoutExpired:
                    code = "timeout"
                print(f"[{stage}] {' '.join(cmd[:6])} ... -> {code} ({time.time() - t0:.0f} s)", flush=True)
        summary[stage] = round(time.time() - t0, 1)
        if stage == "multigpu":
            runs = sorted(Path("runs").glob("paper-162m-*"))
            speed = {r.name: tokens_per_second(r, skip=4) for r in runs if (r / "metrics.jsonl").exists()}
            (Path("results") / "multigpu.json").write_text(json.dumps(speed, indent=1) + "\n")
            plot_train_curves(runs, Path("results") / "multigpu" / "paper-162m-curves.png",
                              f"paper-162m, si-p-rope: 1 GPU, {args.gpus} GPUs, resumed on 1 GPU")
            print(json.dumps(speed, indent=1), flush=True)
        if stage.startswith("train-"):
            runs = sorted(Path("runs").glob("gpu-small-*"))
            speed = {r.name: tokens_per_second(r) for r in runs if (r / "metrics.jsonl").exists()}
            (Path("results") / "train-gpu.json").write_text(json.dumps(speed, indent=1) + "\n")
            print(json.dumps(speed, indent=1), flush=True)
        pack()
    print(json.dumps({"stage_seconds": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
