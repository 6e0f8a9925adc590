"""``siattn reproduce``: the comparison, one run per call, the table from whatever runs are done.

    siattn reproduce gpu-small --list                          # the study's runs and which are done
    siattn reproduce gpu-small --next 2 --out results/gpu-small   # the next two runs not yet in OUT, then the table
    siattn reproduce gpu-small --run rope-s0 --out results/gpu-small
    siattn reproduce gpu-small --table --out results/gpu-small    # only the table and plots

A study (:data:`siattn.evaluation.grid.STUDIES`) fixes the protocol before the runs. Each run trains in a
scratch folder (``--scratch``, default ``runs/reproduce``), is evaluated there (loss at every length, needle and
passkey after their fine-tuning, extension methods on its checkpoint) and leaves only its compact results in
``OUT/runs/<run id>/``; runs already there are not done again. So a grid that does not fit one machine lease
goes on over several: commit ``OUT`` after each, and the next call picks up the runs still missing. A run stopped
part-way (``--deadline``, a crash) keeps what it finished in its scratch folder (the training, the loss phase, and
of the needle and passkey phases the fine-tuned weights and each finished length and measurement): the same
command run again on that machine does only what is still missing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from siattn.evaluation.config import ReproduceConfig
from siattn.recipes.arguments import Command

HELP = "Reproduce the comparison: run a study's runs (train, loss by length, needle, passkey) and its table."


def _launch(args: ReproduceConfig, out: Path, run_ids: list[str]) -> int:
    """Run each id in a subprocess, ``--parallel`` at a time, until ``--deadline``; the number that failed."""
    started = time.time()
    pending, running, failed = list(run_ids), {}, 0
    while pending or running:
        while pending and len(running) < args.parallel:
            run_id = pending.pop(0)
            cmd = [sys.executable, "-m", "siattn", "reproduce", args.study, "--run", run_id, "--out", str(out),
                   "--scratch", args.scratch, "--no-progress",
                   *(["--device", args.device] if args.device else [])]
            log = Path(args.scratch) / args.study / f"{run_id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{time.time() - started:6.0f} s] start {run_id} (log: {log})", flush=True)
            running[run_id] = (subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log)
        time.sleep(2)
        late = args.deadline is not None and time.time() - started > args.deadline
        for run_id, (proc, log) in list(running.items()):
            if late and proc.poll() is None:
                proc.kill()
                print(f"[{time.time() - started:6.0f} s] {run_id}: stopped at the deadline", flush=True)
            code = proc.poll()
            if code is None:
                continue
            del running[run_id]
            failed += code != 0
            tail = "" if code == 0 else " — " + " | ".join(log.read_text().strip().splitlines()[-3:])
            print(f"[{time.time() - started:6.0f} s] {run_id}: exit {code}{tail}", flush=True)
        if late:
            pending.clear()
    return failed


def main(args: ReproduceConfig, _: argparse.Namespace | None = None) -> int:
    """List, run or tabulate the study as ``args`` says."""
    from siattn.evaluation import grid

    study = grid.get_study(args.study)
    out = Path(args.out or Path("runs/reproduce") / study.name / "results")
    if args.list_runs:
        print(f"{study.name}: {study.question}\n\n{grid.describe(study, out)}")
        return 0
    if args.run and len(args.run) == 1 and args.parallel == 1 and args.deadline is None:
        grid.run_one(study, args.run[0], out, scratch=Path(args.scratch), device=args.device,
                     progress=args.progress)
        print(grid.summarize(study, out))
        return 0
    failed = 0
    if args.run or args.next_runs:
        for run_id in args.run or []:
            study.spec(run_id)  # unknown ids fail before anything starts
        run_ids = args.run or grid.missing_runs(study, out)[: args.next_runs]
        if not run_ids:
            print(f"every run of {study.name} is in {out}")
        failed = _launch(args, out, run_ids) if run_ids else 0
    table = grid.summarize(study, out)
    print(f"\n{table}\n{out / 'table.md'}")
    return 1 if failed else 0



COMMAND = Command(HELP, ReproduceConfig, main, description=__doc__)
