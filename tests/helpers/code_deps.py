"""Which files of the ``rap`` package a pipeline stage runs: the import closure of its entry
modules, read from the source (module-level and function-level imports alike, since the CLI
imports the heavy modules inside its subcommands). dvc.yaml must list exactly these as each
stage's code dependencies: an edit elsewhere must not rerun the stage (and delete nothing),
an edit here must."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "rap"


def module_file(name: str) -> Path | None:
    """``rap.data.store`` -> rap/data/store.py (or the package's __init__.py); None outside rap."""
    if name != "rap" and not name.startswith("rap."):
        return None
    base = REPO.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _package_inits(name: str) -> list[Path]:
    """Importing ``rap.a.b`` runs rap/__init__.py and rap/a/__init__.py first."""
    parts = name.split(".")
    return [
        p
        for i in range(1, len(parts))
        if (p := module_file(".".join(parts[:i]))) is not None and p.name == "__init__.py"
    ]


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    if path.name == "__init__.py":
        package = here.rpartition(".")[0] if here.endswith(".__init__") else here
        package = package.removesuffix(".__init__")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            # `from rap.data import synthetic` imports the submodule rap.data.synthetic
            names.update(f"{mod}.{alias.name}" for alias in node.names)
    return names


def closure(*entry_modules: str) -> set[str]:
    """Repository-relative paths of every rap file the entry modules may run."""
    todo = [m for m in entry_modules]
    seen: set[Path] = set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None:
            continue
        for p in [*_package_inits(name), path]:
            if p not in seen:
                seen.add(p)
                mod = ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                todo.extend(_imported_names(p) - {mod})
    return {str(p.relative_to(REPO)) for p in seen}


def _function_imports(tree: ast.Module, name: str, seen: set[str] | None = None) -> set[str]:
    """Modules imported inside cli.py's function ``name`` and the cli.py functions it calls."""
    seen = set() if seen is None else seen
    seen.add(name)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    mods: set[str] = set()
    for node in ast.walk(funcs[name]):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
            mods.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            mods.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in funcs and node.func.id not in seen:
                mods |= _function_imports(tree, node.func.id, seen)
    return mods


def cli_closure(subcommand: str) -> set[str]:
    """What ``rap <subcommand>`` runs: rap/cli.py with its module-level imports, plus what its
    ``cmd_<subcommand>`` function (and the cli.py helpers it calls) imports, lazily."""
    cli = PACKAGE / "cli.py"
    tree = ast.parse(cli.read_text(encoding="utf-8"))
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    # `from rap import cpu_kernels` imports the submodule rap.cpu_kernels
    top |= {
        f"{node.module}.{alias.name}"
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    top |= {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    files = {"rap/cli.py", "rap/__init__.py"}
    for mod in top | _function_imports(tree, f"cmd_{subcommand}"):
        files |= closure(mod)
    return files
