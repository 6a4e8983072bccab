"""The import graph points one way: core <- attention_backends <- serving (the SGLang integration).

* the core (``swaa_sglang/*.py`` outside ``serving/``) imports neither SGLang, nor ``attention_backends``,
  nor the integration layer;
* ``attention_backends/`` never imports the integration layer (its SGLang imports are listed in the
  seam table, checked by test_seam);
* every core module imports in a process where ``import sglang`` fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_EXEMPT = {"launch_server.py"}  # the ``python -m swaa_sglang.launch_server`` shim into serving/


def _core_files() -> list[Path]:
    return sorted(p for p in (ROOT / "swaa_sglang").glob("*.py") if p.name not in CORE_EXEMPT)


def _imported_modules(path: Path, package: str) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against ``package``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_imports_no_sglang_and_nothing_above_it():
    assert len(_core_files()) >= 8, "the core modules moved: update this test"
    bad = {
        p.name: name
        for p in _core_files()
        for name in _imported_modules(p, "swaa_sglang")
        if _under(name, "sglang", "attention_backends", "swaa_sglang.serving")
    }
    assert not bad, f"core modules import layers above them: {bad}"


def test_attention_backends_never_import_the_integration_layer():
    files = sorted((ROOT / "attention_backends").glob("*.py"))
    assert len(files) >= 6
    bad = {
        p.name: name
        for p in files
        for name in _imported_modules(p, "attention_backends")
        if _under(name, "swaa_sglang.serving", "swaa_sglang.launch_server")
    }
    assert not bad, f"attention_backends imports the integration layer: {bad}"


def test_the_checker_sees_relative_imports(tmp_path):
    # the scan would miss a layer break written as a relative import if it did not resolve them
    probe = tmp_path / "probe.py"
    probe.write_text("from .serving import plugin\nfrom . import config\nimport sglang.srt\n")
    names = _imported_modules(probe, "swaa_sglang")
    assert names == ["swaa_sglang.serving", "swaa_sglang", "sglang.srt"]


@pytest.mark.slow
def test_every_core_module_imports_without_sglang():
    modules = [f"swaa_sglang.{p.stem}" for p in _core_files() if p.stem != "__main__"]
    code = (
        "import sys\n"
        "sys.modules['sglang'] = None  # any 'import sglang...' now raises ImportError\n"
        f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
        "assert not any(k.startswith(('sglang.', 'attention_backends')) for k in sys.modules), "
        "[k for k in sys.modules if k.startswith(('sglang.', 'attention_backends'))]\n"
        "print('ok', len(sys.argv))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]
