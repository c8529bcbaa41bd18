"""What a plain ``pip install normkit`` gives (issue 10 item 7).

CI checks that the numba ``cpu`` backend is registered for every op (numba is a core
dependency), and that ``normkit lab`` without its extra prints one line naming what to
install rather than a ModuleNotFoundError traceback.
"""

import os
import subprocess
import sys
from pathlib import Path

import tomllib

import normkit  # noqa: F401  (registers every backend)
from normkit import dispatch

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_numba_is_a_core_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "numba" in core, core
    torch_pin = [d for d in project["dependencies"] if d.startswith("torch")]
    assert torch_pin and ">=" in torch_pin[0], torch_pin  # a range, never a pin


def test_cpu_backend_registered_for_every_op():
    assert dispatch.table, "no ops registered"
    missing = sorted(op for op, backends in dispatch.table.items() if "cpu" not in backends)
    assert not missing, f"ops without the numba cpu backend: {missing}"


def _lab_without(module):
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from normkit.cli import main\n"
        "sys.exit(main(['lab']))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300
    )


def test_lab_without_tqdm_prints_one_line_naming_the_extra():
    out = _lab_without("tqdm")
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert 'pip install "normkit[lab]"' in lines[0] and "tqdm" in lines[0], lines[0]


def test_lab_without_scikit_learn_names_it():
    out = _lab_without("sklearn")
    assert out.returncode == 1 and "scikit-learn" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
