"""amint_pl: Active Membership Inference Test (aMINT) as a Lightning + Hydra experiment framework."""

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


def config_dir() -> Path:
    """The config tree (Hydra's conf/): amint_pl/conf in an installed wheel, <checkout>/conf in
    a source checkout (pyproject.toml maps it into the package at build time)."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


def _checkout_configs_as_package() -> None:
    """In a source checkout on sys.path, make <checkout>/conf importable as `amint_pl.conf`, as
    the wheel ships it, so that Hydra's `initialize_config_module("amint_pl.conf")` finds it."""
    conf = config_dir()
    if "amint_pl.conf" in sys.modules or conf.parent == Path(__file__).resolve().parent:
        return
    spec = importlib.util.spec_from_file_location(
        "amint_pl.conf", conf / "__init__.py", submodule_search_locations=[str(conf)]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["amint_pl.conf"] = module
    spec.loader.exec_module(module)
    globals()["conf"] = module


_checkout_configs_as_package()
