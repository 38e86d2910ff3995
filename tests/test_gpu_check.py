"""benchmarks/gpu_check.sh stays current with the package: its CPU dry run (every step at
tiny sizes) succeeds and writes every result file, and it runs every GPU-only test."""

import ast
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
#: a skip unless torch sees a GPU, however torch is spelled
GPU_ONLY = re.compile(r"skipif\(not .*cuda\.is_available\(\)")


def _gpu_only_tests():
    """(file, test name) of every test skipped when torch sees no CUDA GPU."""
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        if not GPU_ONLY.search(text):
            continue
        tree = ast.parse(text)
        module_wide = any(
            isinstance(node, ast.Assign)
            and any(getattr(target, "id", None) == "pytestmark" for target in node.targets)
            and "cuda.is_available" in ast.unparse(node.value)
            for node in tree.body
        )
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                marks = " ".join(ast.unparse(decorator) for decorator in node.decorator_list)
                if module_wide or GPU_ONLY.search(marks):
                    found.append((path.name, node.name))
    return found


def test_every_gpu_only_test_is_selected_by_the_script():
    tests = _gpu_only_tests()
    files = {name for name, _ in tests}
    assert {"test_cuda.py", "test_kfac.py", "test_networks.py", "test_streaming.py"} <= files
    # the script selects the files by this text and the tests by -k cuda
    assert r'grep -lE "skipif\(not .*cuda\.is_available\(\)" tests/test_*.py' in SCRIPT.read_text()
    assert "-k cuda" in SCRIPT.read_text()
    missed = [(name, test) for name, test in tests if "cuda" not in f"{name}::{test}"]
    assert not missed, f"GPU-only tests whose id lacks 'cuda' (gpu_check.sh skips them): {missed}"


def test_unknown_argument_is_refused():
    result = subprocess.run(
        ["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "unknown argument --gpu" in result.stderr


@pytest.mark.skipif(os.name != "posix", reason="a bash script")
def test_cpu_dry_run_writes_every_result(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    env.pop("PYTHONPATH", None)  # the script puts this checkout first itself
    result = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # the script finds the checkout from its own path
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "FAILED" not in result.stdout
    tests_log = (tmp_path / "cuda_tests.log").read_text()
    assert re.search(r"\d+ skipped", tests_log) and "error" not in tests_log.lower()
    bench = (tmp_path / "bench_gpu.md").read_text()
    for task in ("## mlp", "## lenet"):
        assert task in bench
    rows = [line for line in bench.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == 8  # exact + ekfac + kfac + cg, two tasks
    for row in rows:
        pearson = float(row.split("|")[5])
        assert 0.5 < pearson <= 1.0 + 1e-12, row
    scale = (tmp_path / "bench_scale.md").read_text()
    assert "| ekfac (factored inverse) |" in scale and "| cg + EK-FAC preconditioner |" in scale
    paper = json.loads((tmp_path / "paper_table2.json").read_text())
    assert [row["family"] for row in paper["rows"]] == ["mlp"]
    assert paper["settings"]["device"] == "cpu"
    assert not list(ROOT.glob("benchmarks/results/*quick*")), "a dry run wrote into results/"
