"""Reusable attention benchmarks: what ``siattn bench`` measures, callable from scripts.

    from siattn.benchmarking.cuda import time_prefill
    row = time_prefill("triton-si", 4096, 8, 6, 6, 128, tau=10.0, backward=True, rep_ms=100)

:mod:`~siattn.benchmarking.cuda`: prefill and decoding timings on CUDA; :mod:`~siattn.benchmarking.cpu`: time
and peak memory of the CPU backends. Each result records :func:`siattn.provenance.environment` (commit, hardware,
versions, date).
"""
