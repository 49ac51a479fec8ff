"""The package's shape: layers that import only the layers below them, no import cycles, and a
wheel that carries its configs."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nmt"

# Each layer may import itself and the layers listed for it (DESIGN.md's layers): the network
# (model) and search know nothing of each other, of training or of the command lines.
LAYERS = {
    "config": ["nmt.config", "nmt.options"],
    "data": ["nmt.data"],
    "model": ["nmt.model"],
    "search": ["nmt.search"],
    "library": [
        "nmt.checkpoint",
        "nmt.model_directory",
        "nmt.hub",
        "nmt.model_sources",
        "nmt.model_card",
        "nmt.onnx_graphs",
        "nmt.onnx_kernels",
        "nmt.onnx_engine",
        "nmt.workers",
        "nmt.translation",
        "nmt.scoring",
        "nmt.evaluation",
        "nmt.inspection",
        "nmt.plots",
        "nmt.training",
    ],
    "service": ["nmt.service"],
    "cli": ["nmt.cli"],
}
ALLOWED = {
    "config": set(),
    "data": {"config"},
    "model": {"config", "data"},
    "search": {"config", "data"},
    "library": {"config", "data", "model", "search"},
    "service": {"config", "data", "model", "search", "library"},
    "cli": {"config", "data", "model", "search", "library", "service"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return layer
    return None


def imports_of(path: Path) -> set[str]:
    """Every nmt module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("nmt."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nmt"):
            found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {module: imports_of(path) for module, path in modules.items() if module != "nmt"}


def test_every_module_belongs_to_a_layer():
    assert [module for module in import_graph() if layer_of(module) is None] == []


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, imported in import_graph().items():
        own = layer_of(module)
        for target in imported:
            other = layer_of(target)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} ({own}) imports {target} ({other})")
    assert wrong == []


def test_the_network_and_search_load_no_tokenizer():
    """They need the reserved ids only (nmt.data.special), not SentencePiece."""
    code = "import sys, nmt.model.seq2seq, nmt.search; print('sentencepiece' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "False", loaded.stderr


def test_there_are_no_import_cycles():
    graph = import_graph()
    resolved = {module: {t for t in targets if t in graph} for module, targets in graph.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(resolved[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(resolved):
        visit(module, [])


@pytest.mark.slow  # a pip wheel build and an nmt-train start: ~40 s
def test_the_wheel_carries_the_configs_and_an_installed_nmt_train_finds_them(tmp_path):
    """Built from a copy of the sources, the wheel must hold every module and config; unpacked
    and run from an empty directory, nmt-train composes its configs from the package."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("nmt", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("nmt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(path.relative_to(ROOT)) for path in (ROOT / "conf").rglob("*.yaml")}
    assert {f"nmt/{config}" for config in configs} <= names
    modules = {str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")}
    assert modules <= names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("nmt-train", "nmt-translate", "nmt-evaluate", "nmt-inspect"):
        assert f"{command} = nmt.cli." in scripts

    unpacked, empty = tmp_path / "site", tmp_path / "empty"
    zipfile.ZipFile(wheel).extractall(unpacked)
    empty.mkdir()
    code = (
        "import sys, nmt; print(nmt.__file__); from nmt.cli.train import main;"
        " sys.argv = ['nmt-train', '--cfg', 'job', 'train=smoke', 'data=multi30k_fr_en']; main()"
    )
    composed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=empty,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert composed.returncode == 0, composed.stderr
    assert composed.stdout.splitlines()[0].startswith(str(unpacked))
    assert "src_lang: fr" in composed.stdout and "train_limit: 500" in composed.stdout
