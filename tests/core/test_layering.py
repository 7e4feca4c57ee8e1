"""Layering and hygiene: ttm_core never imports ComfyUI; ttm_batch imports only its declared dependencies;
no print, no bare except."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ttm_core.errors import TTMInputError

ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config", "folder_paths", "server",
                 "nodes", "execution", "node_helpers", "latent_preview", "app", "utils"}
CORE_FILES = sorted((ROOT / "ttm_core").rglob("*.py"))
BATCH_FILES = sorted((ROOT / "batch" / "ttm_batch").rglob("*.py"))
NATIVE_FILES = sorted((ROOT / "native").rglob("*.py"))
PACK_FILES = (CORE_FILES + sorted((ROOT / "nodes").rglob("*.py")) + NATIVE_FILES + [ROOT / "__init__.py"]
              + BATCH_FILES)
# What batch/pyproject.toml declares (import names): ttm-batch must install and run without the pack.
BATCH_DEPENDENCIES = {"websocket", "tqdm"}


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) for every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_ttm_core_imports_nothing_from_comfyui(path: Path) -> None:
    depth = len(path.relative_to(ROOT / "ttm_core").parts)  # 1 for ttm_core/x.py
    for module, level in imports(path):
        if level == 0:
            assert module.split(".")[0] not in COMFY_MODULES, f"{path.name} imports {module}"
        else:
            assert level <= depth, f"{path.name}: 'from {'.' * level}{module}' leaves ttm_core"


@pytest.mark.parametrize("path", BATCH_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_ttm_batch_imports_only_the_standard_library_and_its_dependencies(path: Path) -> None:
    for module, level in imports(path):
        top = module.split(".")[0]
        if level == 0 and module != "__future__":
            assert top in sys.stdlib_module_names or top in BATCH_DEPENDENCIES, (
                f"{path.relative_to(ROOT)} imports {module}, which batch/pyproject.toml does not declare "
                "(ttm-batch installs without torch or the pack)")
        assert level <= 1, f"{path.name}: 'from {'.' * level}{module}' leaves ttm_batch"


def test_importing_ttm_batch_needs_no_dependency_and_has_no_side_effects() -> None:
    """`ttm-batch --help` and the client's HTTP part work before websocket-client/tqdm are even imported."""
    code = (
        "import logging, sys\n"
        "handlers = list(logging.getLogger().handlers)\n"
        "import ttm_batch, ttm_batch.client, ttm_batch.jobs, ttm_batch.runner, ttm_batch.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('websocket', 'tqdm', 'torch', 'ttm_core'))\n"
        "assert not heavy, heavy\n"
        "assert logging.getLogger().handlers == handlers, 'a module configured logging at import'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "batch", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_importing_ttm_core_loads_no_comfy_and_has_no_side_effects() -> None:
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in CORE_FILES]
    code = (
        "import logging, sys\n"
        "handlers = list(logging.getLogger().handlers)\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(COMFY_MODULES)!r})\n"
        "assert not bad, bad\n"
        "assert logging.getLogger().handlers == handlers, 'a module configured logging at import'\n"
        "print('ok', len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


@pytest.mark.parametrize("path", PACK_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_print_and_no_bare_except(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "print", f"{path.name}:{node.lineno} uses print; use logging"
        if isinstance(node, ast.ExceptHandler):
            assert node.type is not None, f"{path.name}:{node.lineno} has a bare except"


def test_nodes_import_the_core_relatively() -> None:
    """`nodes` is also ComfyUI's own top-level module: the pack must never import itself absolutely.

    The one absolute `nodes` import allowed is ComfyUI's own, spelled `import nodes as comfy_nodes`.
    """
    for path in [*sorted((ROOT / "nodes").rglob("*.py")), ROOT / "__init__.py"]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "nodes":
                        assert alias.asname == "comfy_nodes", f"{path.name}: import ComfyUI's nodes as comfy_nodes"
                    else:
                        assert alias.name.split(".")[0] != "ttm_core", f"{path.name} imports {alias.name} absolutely"
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] not in {"nodes", "ttm_core"}, \
                    f"{path.name} imports {node.module} absolutely"


def test_requirements_leave_torch_to_comfyui() -> None:
    """pip must never replace the user's (CUDA) torch: the pack's requirements do not name it."""
    for path in (ROOT / "requirements.txt", ROOT / "pyproject.toml", ROOT / "batch" / "pyproject.toml"):
        names = re.findall(r'^\s*"?([A-Za-z0-9_.-]+)\s*(?:[<>=!~;]|"|$)', path.read_text(), re.M)
        assert not {"torch", "torchvision", "torchaudio"} & {n.lower() for n in names}, path.name


def test_a_too_old_torch_is_refused_with_the_fix() -> None:
    from ttm_core.environment import check_torch, torch_version_ok

    assert torch_version_ok("2.14.1+cu130") and torch_version_ok("2.4.0") and torch_version_ok("3.0")
    assert not torch_version_ok("2.3.1+cu121") and not torch_version_ok("1.13.1") and not torch_version_ok("nightly")
    with pytest.raises(TTMInputError,
                       match=r"needs PyTorch 2\.4 or newer, this ComfyUI has 2\.3\.1.*ComfyUI's install"):
        check_torch("2.3.1+cu121")


@pytest.mark.parametrize("path", NATIVE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_native_engine_never_imports_the_nodes(path: Path) -> None:
    """Dependencies point one way: nodes -> native -> ttm_core."""
    for module, level in imports(path):
        if level >= 2:
            assert module.split(".")[0] in ("ttm_core", ""), f"{path.name}: 'from {'.' * level}{module}'"
        if level == 0:
            assert module.split(".")[0] not in ("ttm_core", "native"), f"{path.name} imports {module} absolutely"


PROVIDED_BY_COMFYUI = {"torch", "torchvision", "safetensors_rust", "yaml", "aiohttp", "comfyui_frontend_package"}
"""Distributions ComfyUI itself installs (its requirements.txt); the pack imports them without listing them."""
OPTIONAL = {"sam2": "requirements-sam2.txt", "bitsandbytes": "8-bit optimizers of ttm-train (pip install bitsandbytes)",
            "deepspeed": "ttm-train under configs/train/zero*.yaml (pip install deepspeed)",
            "wandb": "ttm-train's optional logger (pip install wandb)"}
"""Imported lazily, installed on purpose by the user (the import error says how)."""
TRAINING_FILES = ("ttm_core/train/", "benchmarks/data_build.py", "benchmarks/train_step.py")
"""The trained path (ttm-data, ttm-train): may also import requirements-train.txt's distributions."""


def _declared(name: str) -> set[str]:
    return {re.split(r"[<>=!~;\s\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for line in (ROOT / name).read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def test_every_third_party_import_is_a_declared_requirement() -> None:
    """A clean install gets everything the pack imports: each top-level module a pack file imports is the
    standard library's, ComfyUI's, an optional extra, or belongs to a distribution in requirements.txt (a
    missing OpenCV once passed every test here and failed on a fresh clone)."""
    from importlib.metadata import packages_distributions

    declared = _declared("requirements.txt")
    training = declared | _declared("requirements-train.txt")
    owners = packages_distributions()
    missing = set()
    for path in [p for p in PACK_FILES if p not in BATCH_FILES]:
        for module, level in imports(path):
            top = module.split(".")[0]
            if level or not top or top in sys.stdlib_module_names or top in COMFY_MODULES or top in OPTIONAL:
                continue
            if top in {"ttm_core", "native", "nodes", "benchmarks"}:
                continue
            dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
            if dists & PROVIDED_BY_COMFYUI or top in PROVIDED_BY_COMFYUI:
                continue
            allowed = training if str(path.relative_to(ROOT)).startswith(TRAINING_FILES) else declared
            if not dists & allowed:
                missing.add(f"{path.relative_to(ROOT)}: {top} ({', '.join(sorted(dists)) or 'not installed'})")
    assert not missing, sorted(missing)
