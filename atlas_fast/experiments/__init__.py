"""Research harness on top of the trainer: `atlas-fast experiment refresh` (refresh.py) and
`atlas-fast experiment refresh-diagnosis` (refresh_diagnosis.py). Their lab notes: docs/experiments/refresh.md."""
