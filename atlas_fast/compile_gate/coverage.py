"""Which Triton kernels atlas_fast/kernels/ defines: every @triton.jit function some launcher subscripts with a grid."""

from __future__ import annotations

import ast
from pathlib import Path


def _is_triton_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr in ("jit", "autotune", "heuristics")


def launchable_kernels(folder: Path | None = None) -> set[str]:
    """Names of the @triton.jit functions launched as ``name[grid](...)`` in the kernel modules."""
    if folder is None:
        import atlas_fast.kernels

        folder = Path(atlas_fast.kernels.__file__).parent
    kernels = set()
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        jitted = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and any(_is_triton_jit(d) for d in node.decorator_list)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in jitted:
                kernels.add(node.value.id)
    return kernels
