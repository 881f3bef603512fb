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


def _copy_sources(source):
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("amint_pl", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))


def _venv(root, name):
    """A new venv that reuses this environment's packages (torch, Lightning, Hydra) through a .pth
    file, after its own: no network, nothing downloaded."""
    venv = root / name
    assert _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=root).returncode == 0
    python = venv / "bin" / "python"
    site = _run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root
    )
    # This environment's amint_pl, if installed editable here, is a .pth hook, which a plain path
    # line does not run: the venv sees only its own.
    Path(site.stdout.strip(), "reuse_packages.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return python


def _pip(python, *args, cwd):
    return _run(sys.executable, "-m", "pip", "--python", str(python), *args, cwd=cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the venv's python, the wheel): the wheel built from a copy of the sources, installed with
    no dependencies into a new venv that reuses this environment's packages (torch, Lightning,
    Hydra) through a .pth file: no network, nothing downloaded."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    _copy_sources(source)
    build = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(root / "dist"), str(source), cwd=root,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (root / "dist").glob("amint_pl-*.whl")
    python = _venv(root, "venv")
    install = _pip(python, "install", "--no-deps", "--no-index", "-q", str(wheel), cwd=root)
    assert install.returncode == 0, install.stderr[-3000:]
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


def test_an_editable_install_finds_the_configs_in_the_checkout(tmp_path):
    """`make install` (pip install -e): amint_pl.conf is the checkout's conf/."""
    source = tmp_path / "checkout"
    _copy_sources(source)
    python = _venv(tmp_path, "venv")
    install = _pip(
        python, "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e",
        str(source), cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        str(python), "-c", "import amint_pl, amint_pl.conf; print(amint_pl.conf.__file__); "
        "print(amint_pl.config_dir())", cwd=elsewhere,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.split() == [str(source / "conf" / "__init__.py"), str(source / "conf")]
    job = _run(str(python), "-m", "amint_pl.run", "--cfg", "job", "optim=sgd", cwd=elsewhere)
    assert job.returncode == 0 and "_target_: torch.optim.SGD" in job.stdout, job.stderr[-2000:]
