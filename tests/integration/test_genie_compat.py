"""The genie_python a script sees: the IOC's where no real one is installed (or with
``BGRSCRPT_GENIE_PYTHON=kit``), a real one otherwise; working over Channel Access
against a simulated instrument. That it answers as IBEX's does is
test_genie_differential.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bgrscrpt_ioc.supervisor.env import compat_site_dir, kit_root, script_environment
from tests.sim_instrument import Simulation

COMPAT = kit_root() / "compat"


def child_env(tmp_path: Path, prefix: str = "", base: dict | None = None) -> dict[str, str]:
    return script_environment(
        dict(os.environ if base is None else base),
        slot="BGRSCRPT_01",
        config_dir=tmp_path,
        var_dir=tmp_path / "var",
        kit_root=kit_root(),
        notify_socket="",
        prefix=prefix,
    )


def run_python(python: str, code: str, env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run(
        [python, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "sitecustomize" not in out.stderr, out.stderr
    return out.stdout


WHERE = """
import sys, genie_python, technique
print(genie_python.__file__)
print(technique.__file__)
print(any(p.endswith("kit/site") for p in sys.path))
"""


def fresh_venv(tmp_path: Path, genie: bool) -> tuple[str, Path | None]:
    """A virtual environment of its own, with or without a (stand-in) real genie_python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    real = None
    if genie:
        site_packages = next((venv / "lib").glob("python3*/site-packages"))
        real = site_packages / "genie_python"
        real.mkdir()
        (real / "__init__.py").write_text("REAL = True\n")
    return str(venv / "bin" / "python"), real


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BGRSCRPT_GENIE_PYTHON")}
    return {**env, **extra}


def test_compat_modules_are_found_without_a_real_installation(tmp_path, test_tag):
    python, _ = fresh_venv(tmp_path, genie=False)
    lines = run_python(python, WHERE, child_env(tmp_path, base=base_env()), tmp_path).splitlines()
    assert lines[0] == str(COMPAT / "genie_python" / "__init__.py")
    assert lines[1] == str(COMPAT / "technique" / "__init__.py")
    assert lines[2] == "False"  # the way in is not left on the script's path


def test_a_real_genie_python_in_site_packages_wins(tmp_path, test_tag):
    python, real = fresh_venv(tmp_path, genie=True)
    lines = run_python(python, WHERE, child_env(tmp_path, base=base_env()), tmp_path).splitlines()
    assert lines[0] == str(real / "__init__.py")
    assert lines[1] == str(COMPAT / "technique" / "__init__.py")  # what it lacks still comes


def test_kit_mode_takes_the_iocs_genie_python_even_so(tmp_path, test_tag):
    python, real = fresh_venv(tmp_path, genie=True)
    env = child_env(tmp_path, base=base_env(BGRSCRPT_GENIE_PYTHON="kit"))
    lines = run_python(python, WHERE, env, tmp_path).splitlines()
    assert lines[0] == str(COMPAT / "genie_python" / "__init__.py")
    # Only genie_python: a real technique package would still win.
    assert lines[1] == str(COMPAT / "technique" / "__init__.py")


def test_an_inherited_pythonpath_and_sitecustomize_are_kept(tmp_path, test_tag):
    own = tmp_path / "own"
    (own / "genie_python").mkdir(parents=True)
    (own / "genie_python" / "__init__.py").write_text("")
    (own / "sitecustomize.py").write_text("import os\nos.environ['OWN_SITE_RAN'] = 'yes'\n")
    env = child_env(tmp_path, base=base_env(PYTHONPATH=str(own)))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(compat_site_dir()), str(own)]
    out = run_python(
        sys.executable,
        "import os, genie_python; print(genie_python.__file__, os.environ.get('OWN_SITE_RAN'))",
        env,
        tmp_path,
    )
    assert out.split() == [str(own / "genie_python" / "__init__.py"), "yes"]


GENIE_SCRIPT = """
import json
from genie_python import genie as g

before = g.prefix_pv_name("X")
g.set_instrument(None)
out = {"before": before, "prefixed": g.prefix_pv_name("CS:SB:T1")}
cget = g.cget("t1")
out["cget"] = list(cget.items())
out["cget_type"] = type(cget).__name__
out["missing"] = g.cget("NOT_A_BLOCK")
g.cset("T2", 42.5, wait=True)
out["after_cset"] = g.get_pv("CS:SB:T2", is_local=True)
out["runnumber"] = g.get_runnumber()
g.set_pv("DAE:RUNSTATE", "running", wait=True, is_local=True)
out["runstate"] = g.get_runstate()
out["state"] = g.get_pv("DAE:RUNSTATE", is_local=True)
g.set_pv("CS:SB:T1:SIM:SEVR", 3, wait=True, is_local=True)
out["severity"] = g.get_pv("CS:SB:T1.SEVR", is_local=True)
out["error"] = g.get_pv("NOT:THERE", is_local=True)
out["plot_window"] = g.adv.open_plot_window(is_primary=False)
print(json.dumps(out))
"""


def test_genie_against_a_simulated_instrument(tmp_path, port_pool, prefix, test_tag):
    sim = Simulation(prefix, port_pool.take(), ["T1", "T2"], moving=False).start()
    try:
        out = subprocess.run(
            [sys.executable, "-c", GENIE_SCRIPT],
            env=child_env(tmp_path, prefix),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        sim.stop()
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["before"] == "X"  # no prefix until set_instrument, as genie_python
    assert result["prefixed"] == f"{prefix}CS:SB:T1"  # set_instrument(None): $MYPVPREFIX
    assert result["cget_type"] == "OrderedDict"
    assert result["cget"] == [
        ["connected", True], ["name", "t1"], ["value", 0.0], ["unit", "K"],
        ["runcontrol", False], ["lowlimit", 0.0], ["highlimit", 0.0], ["alarm", "NO_ALARM"],
    ]  # fmt: skip
    assert result["missing"] is None
    assert result["after_cset"] == 42.5
    assert result["runnumber"] == "00001000"
    assert result["runstate"] == result["state"] == "RUNNING"  # enums read as their names
    assert result["severity"] == "INVALID"
    assert result["error"] is None
    assert "UnableToConnectToPVException: Unable to connect to PV" in out.stderr
    assert "No block with the name 'NOT_A_BLOCK' exists" in out.stderr
    assert result["plot_window"] == ""  # no plot served by this script


@pytest.mark.parametrize("name", ["genie_python.genie", "technique.muon.background_plot"])
def test_compat_modules_import_cleanly(tmp_path, name, test_tag):
    out = run_python(sys.executable, f"import {name}; print('ok')", child_env(tmp_path), tmp_path)
    assert out.strip() == "ok"
