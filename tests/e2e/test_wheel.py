"""The wheel: built from the repository, installed (not editable) into a fresh venv, it carries every
module and config, and `python -m amint_pl.run` finds its configs from any folder."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # builds a wheel and starts processes in a new venv


def _run(*args, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the venv's python, the wheel): the wheel built from a copy of the sources, installed with
    no dependencies into a new venv that reuses this environment's packages (torch, Lightning,
    Hydra) through a .pth file: no network, nothing downloaded."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("amint_pl", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(root / "dist"), str(source), cwd=root,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (root / "dist").glob("amint_pl-*.whl")
    venv = root / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=root).returncode == 0
    python = venv / "bin" / "python"
    install = _run(
        sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
        "--no-index", "-q", str(wheel), cwd=root,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    site = _run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root
    )
    # After the venv's own site-packages: this environment's packages, not its amint_pl (an
    # editable install here is a .pth hook, which a plain path line does not run).
    Path(site.stdout.strip(), "reuse_packages.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return python, wheel


def test_the_wheel_carries_every_module_and_config(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "amint_pl").rglob("*.py")}
    configs = {f"amint_pl/{p.relative_to(REPO)}" for p in (REPO / "conf").rglob("*.yaml")}
    assert modules <= names and configs <= names and "amint_pl/conf/__init__.py" in names
    assert len(configs) > 40


def test_the_installed_package_finds_its_configs_from_any_folder(installed, tmp_path):
    python, _ = installed
    where = _run(
        str(python), "-c", "import amint_pl, amint_pl.conf; print(amint_pl.__file__); "
        "print(amint_pl.conf.__file__); print(amint_pl.config_dir())", cwd=tmp_path,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-2000:]
    package, conf, config_dir = where.stdout.split()
    venv = str(python.parents[1])
    assert package.startswith(venv) and conf.startswith(venv) and config_dir.startswith(venv)
    assert str(REPO) not in where.stdout

    job = _run(str(python), "-m", "amint_pl.run", "--cfg", "job", "model=resnet18", cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "name: digits" in job.stdout and "name: resnet18" in job.stdout
    # The config groups are listed from the installed configs: a wrong option names them.
    bad = _run(str(python), "-m", "amint_pl.run", "dataset=nope", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: unknown dataset 'nope'")
    assert "cifar10" in bad.stderr and "Traceback" not in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written where it ran
