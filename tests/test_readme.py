"""The README's self-contained Python example runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_ops_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    runnable = [block for block in blocks if block.startswith("import torch")]  # the others need your model or data
    assert len(runnable) == 1
    namespace = {}
    exec(compile(runnable[0], str(README), "exec"), namespace)
    assert namespace["score"].grad is not None and namespace["gold"].shape == (2, 5)
