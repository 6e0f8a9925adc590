"""The README's usage example runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    layer = namespace["Attention"](dim=64, heads=4, kv_heads=2, train_length=64)
    x = torch.randn(2, 40, 64)
    full = layer(x)
    assert full.shape == (2, 40, 64) and torch.isfinite(full).all()
