"""Which Triton kernels atlas_fast/kernels/ defines: every @triton.jit function some launcher subscripts with a grid,
and how it launches them (through torch.library.wrap_triton, which torch.compile can see into, or bare)."""

from __future__ import annotations

import ast
from pathlib import Path


def _is_triton_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr in ("jit", "autotune", "heuristics")


def _launches(folder: Path | None) -> list[tuple[str, bool]]:
    """(kernel, through wrap_triton) for each ``name[grid]`` or ``wrap_triton(name)[grid]`` in the kernel modules."""
    if folder is None:
        import atlas_fast.kernels

        folder = Path(atlas_fast.kernels.__file__).parent
    launches = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        jitted = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and any(_is_triton_jit(d) for d in node.decorator_list)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Subscript):
                continue
            launched = node.value
            wrapped = (
                isinstance(launched, ast.Call)
                and isinstance(launched.func, ast.Name)
                and launched.func.id == "wrap_triton"
                and len(launched.args) == 1
            )
            if wrapped:
                launched = launched.args[0]
            if isinstance(launched, ast.Name) and launched.id in jitted:
                launches.append((launched.id, wrapped))
    return launches


def launchable_kernels(folder: Path | None = None) -> set[str]:
    """Names of the @triton.jit functions launched as ``name[grid](...)`` or ``wrap_triton(name)[grid](...)``."""
    return {kernel for kernel, _ in _launches(folder)}


def bare_launches(folder: Path | None = None) -> set[str]:
    """Kernels launched without wrap_triton somewhere: torch.compile could not trace those launches."""
    return {kernel for kernel, wrapped in _launches(folder) if not wrapped}
