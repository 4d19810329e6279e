"""The wheel: it holds every module and every Hydra config, and its apps find ``memxbar/conf/``
as the package ``memxbar.conf`` (pkg:// search path) with the checkout nowhere on sys.path or cwd.

Builds with the running interpreter's pip and setuptools (``--no-build-isolation --no-index``: no
network) from a copy of the sources, so the checkout gets no build/ or egg-info folders.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "memxbar")
"""What the build reads: the project metadata, its readme and license, the namespace."""
PACKAGES = ("memxbar/crossbar", "memxbar/admm", "memxbar/experiments")

COMPOSE = """
import sys
from pathlib import Path

from hydra import compose, initialize

from memxbar import experiments
from memxbar.experiments.conf_source import config_path
from memxbar.experiments.config import load_compress_config, load_study_config

site = Path(sys.argv[1]).resolve()
assert Path(experiments.__file__).resolve().is_relative_to(site), experiments.__file__
assert config_path() == "pkg://memxbar.conf", config_path()
with initialize(config_path=config_path(), version_base="1.3"):
    for name in sys.argv[2:]:
        load_compress_config(compose(config_name="config", overrides=["+experiment=" + name]))
    load_compress_config(compose(config_name="config", overrides=["device=rram_neurosim",
                                                                  "admm.levels=null"]))
    load_study_config(compose(config_name="device_study"))
    cfg = compose(config_name="config", overrides=["hydra/launcher=local"],
                  return_hydra_config=True)
    assert "joblib" in cfg.hydra.launcher._target_.lower(), cfg.hydra.launcher
print("composed")
"""
"""Run in the unpacked wheel: compose every experiment, a device preset, the study and a
launcher through the apps' own config path."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                          "--no-build-isolation", "--no-index", "-q", "-w", str(tmp / "dist")],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = (tmp / "dist").glob("memxbar-*.whl")
    return built


def test_wheel_holds_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES
               for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(modules - names)
    assert not missing, (f"{missing} not in the wheel: add their package to [tool.setuptools] "
                         "packages in pyproject.toml")
    configs = {p.relative_to(ROOT).as_posix()
               for p in (ROOT / "memxbar" / "conf").rglob("*") if p.suffix in (".yaml", ".py")}
    assert "memxbar/conf/config.yaml" in configs
    assert "memxbar/conf/__init__.py" in configs
    assert "memxbar/__init__.py" in names
    assert "memxbar/experiments/digits.npz" in names  # the embedded data set (issue 25)
    assert sorted(configs - names) == []
    data = {p.relative_to(ROOT).as_posix()
            for p in (ROOT / "memxbar" / "crossbar" / "data").rglob("*.yaml")}
    assert data and sorted(data - names) == []


def test_installed_apps_read_configs_from_the_package(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    run_dir = tmp_path / "elsewhere"  # neither the checkout nor the unpacked wheel
    run_dir.mkdir()
    # -S: no site-packages processing, so the checkout's editable-install finder cannot serve a
    # module the wheel lacks; the dependencies come from this interpreter's site-packages
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *deps]),
           "HYDRA_FULL_ERROR": "1"}
    experiments = sorted(p.stem for p in (ROOT / "memxbar" / "conf" / "experiment").glob(
        "*.yaml"))
    out = subprocess.run([sys.executable, "-S", "-c", COMPOSE, str(site), *experiments],
                         cwd=run_dir, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "composed" in out.stdout, out.stdout + out.stderr

    out = subprocess.run([sys.executable, "-S", "-m", "memxbar.experiments.compress", "--info",
                          "all", "train.epochs=3"], cwd=run_dir, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    main = [line for line in out.stdout.splitlines() if line.startswith("| main ")]
    assert main and "pkg://memxbar.conf" in main[0], out.stdout
    assert "epochs: 3" in out.stdout and "name: lenet5" in out.stdout, out.stdout
    assert str(ROOT) not in out.stdout, out.stdout


def test_every_third_party_import_is_a_declared_dependency():
    """``pip install .`` in a clean venv pulls every import of the packages (issue 25): each
    top-level module they import that is neither the standard library nor their own belongs
    to a distribution pyproject.toml names (a missing one worked here only because another
    package pulled it in, as scipy and omegaconf once did)."""
    import ast
    import re
    from importlib.metadata import packages_distributions

    own = {"memxbar"}
    names = set()
    for pkg in (*PACKAGES, "memxbar/conf"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    third = sorted(n for n in names if n not in sys.stdlib_module_names and n not in own)
    assert {"torch", "numpy", "hydra", "scipy"} <= set(third), third

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(),
                      re.S | re.M).group(1)  # tomllib is 3.11+; the project supports 3.10
    declared = {norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0])
                for d in re.findall(r'^\s*"([^"]+)"', block, re.M)}
    assert {"torch", "hydra-core", "scipy"} <= declared, declared
    dists = packages_distributions()
    missing = {n: dists.get(n) for n in third
               if not any(norm(d) in declared for d in dists.get(n, []))}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
