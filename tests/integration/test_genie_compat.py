"""The genie_python subset a script sees: found only without a real installation, and
working over Channel Access against a simulated instrument."""

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


def test_compat_modules_are_found_without_a_real_installation(tmp_path, test_tag):
    lines = run_python(sys.executable, WHERE, child_env(tmp_path), tmp_path).splitlines()
    assert lines[0] == str(COMPAT / "genie_python" / "__init__.py")
    assert lines[1] == str(COMPAT / "technique" / "__init__.py")
    assert lines[2] == "False"  # the way in is not left on the script's path


def test_a_real_genie_python_in_site_packages_wins(tmp_path, test_tag):
    # A fresh virtual environment with its own "real" genie_python in site-packages.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    real = site_packages / "genie_python"
    real.mkdir()
    (real / "__init__.py").write_text("REAL = True\n")
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    lines = run_python(
        str(venv / "bin" / "python"), WHERE, child_env(tmp_path, base=base), tmp_path
    ).splitlines()
    assert lines[0] == str(real / "__init__.py")
    assert lines[1] == str(COMPAT / "technique" / "__init__.py")  # what it lacks still comes


def test_an_inherited_pythonpath_and_sitecustomize_are_kept(tmp_path, test_tag):
    own = tmp_path / "own"
    (own / "genie_python").mkdir(parents=True)
    (own / "genie_python" / "__init__.py").write_text("")
    (own / "sitecustomize.py").write_text("import os\nos.environ['OWN_SITE_RAN'] = 'yes'\n")
    env = child_env(tmp_path, base={**os.environ, "PYTHONPATH": str(own)})
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

g.set_instrument(None)
out = {"prefixed": g.prefix_pv_name("CS:SB:T1")}
out["cget"] = g.cget("T1")
out["missing"] = g.cget("NOT_A_BLOCK")
g.cset("T2", 42.5, wait=True)
out["after_cset"] = g.get_pv("CS:SB:T2", is_local=True)
out["runnumber"] = g.get_runnumber()
out["runstate"] = g.get_runstate()
g.set_pv("DAE:RUNSTATE", "RUNNING", wait=True, is_local=True)
g.set_pv(g.prefix_pv_name("DAE:RUNNUMBER"), "00001001", wait=True)
out["runstate2"] = g.get_runstate()
out["runnumber2"] = g.get_runnumber()
out["state_index"] = g.get_pv("DAE:RUNSTATE", is_local=True)
g.set_pv("CS:SB:T1:SIM:SEVR", 3, wait=True, is_local=True)
out["invalid"] = g.cget("T1")["alarm"]
try:
    g.get_pv("NOT:THERE", is_local=True)
except IOError as exc:
    out["error"] = type(exc).__name__
out["plot_window"] = g.adv.open_plot_window(is_primary=False)
print(json.dumps(out))
"""


def test_genie_subset_against_a_simulated_instrument(tmp_path, port_pool, prefix, test_tag):
    sim = Simulation(prefix, port_pool.take(), ["T1", "T2"], moving=False).start()
    try:
        out = run_python(sys.executable, GENIE_SCRIPT, child_env(tmp_path, prefix), tmp_path)
    finally:
        sim.stop()
    result = json.loads(out.splitlines()[-1])
    assert result["prefixed"] == f"{prefix}CS:SB:T1"
    assert result["cget"] == {
        "name": "T1",
        "value": 0.0,
        "unit": "K",
        "connected": True,
        "alarm": "NO_ALARM",
    }
    assert result["missing"]["connected"] is False and result["missing"]["value"] is None
    assert result["after_cset"] == 42.5
    assert (result["runnumber"], result["runstate"]) == ("00001000", "SETUP")
    assert (result["runnumber2"], result["runstate2"]) == ("00001001", "RUNNING")
    assert result["state_index"] == 2  # without to_string, an enum's index, as genie gives
    assert result["invalid"] == "INVALID"
    assert result["error"] == "UnableToConnectToPVException"
    assert result["plot_window"] == ""  # no plot served by this script


@pytest.mark.parametrize("name", ["genie_python.genie", "technique.muon.background_plot"])
def test_compat_modules_import_cleanly(tmp_path, name, test_tag):
    out = run_python(sys.executable, f"import {name}; print('ok')", child_env(tmp_path), tmp_path)
    assert out.strip() == "ok"
