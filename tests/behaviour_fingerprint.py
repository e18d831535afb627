"""A refactor's proof: the sha256 of what a few seeded tiny training steps produce, per gold mode and refresh policy.

    python tests/behaviour_fingerprint.py            # prints one sha256 per run and the overall one

Run it on the commits before and after a refactor (each checkout's own atlas_fast on PYTHONPATH): the same
digests mean the same losses, grad norms, re-embedding counts and metrics to the last bit. Timings are left out.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

RUNS = {
    **{f"gold={mode}": {"gold_score_mode": mode} for mode in ("pdist", "adist", "loop", "emdr")},
    **{f"refresh={policy}": {"refresh": policy} for policy in ("none", "full", "incremental", "rerank")},
    "refresh=query-side": {"refresh": "query-side", "untied_retriever": True},
    # The reader warm-up over cached encoder states: a title-copy step, question steps, the dev loss at each step.
    "warmup=cached": {
        "freeze_retriever_steps": 3,
        "warmup_cache_examples": 8,
        "reader_copy_steps": 1,
        "dev_loss_every": 1,
    },
}


def _fingerprint(root: Path, name: str, overrides: dict) -> str:
    try:
        from atlas_fast.testing.tiny import tiny_config
    except ImportError:  # a commit from before the tiny fixtures moved to atlas_fast.testing
        from atlas_fast.train.tiny import tiny_config
    from atlas_fast.train import train

    base = dict(steps=4, freeze_retriever_steps=1, checkpoint_every=0, refresh_every=2, refresh_budget=8)
    config = tiny_config(root, output_dir=str(root / name), **{**base, **overrides})
    summary = train(config)
    records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    kept = [{key: value for key, value in record.items() if not key.startswith("time_")} for record in records]
    facts = {"records": kept, "after": summary["after"], "reembedded": summary["documents_reembedded"]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def main() -> int:
    import torch

    torch.manual_seed(0)  # the tiny BERT the first run writes (and every run shares) is randomly initialised
    with tempfile.TemporaryDirectory() as scratch:
        digests = {name: _fingerprint(Path(scratch), name, overrides) for name, overrides in RUNS.items()}
    for name, digest in digests.items():
        print(f"{digest}  {name}")
    print(f"{hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()}  all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
