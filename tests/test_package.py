"Package-level checks: the installed version, the console script and the device choice."
import configparser
import importlib.metadata
from pathlib import Path

import pytest

import cryoseg

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    assert cryoseg.__version__ == cfg["DEFAULT"]["version"]


def test_console_script_points_at_the_cli():
    eps = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "cryoseg"]
    assert len(eps) == 1, eps
    from cryoseg.cli.main import main
    assert eps[0].load() is main


def test_get_device_refuses_missing_cuda():
    import torch
    from cryoseg.core import get_device
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    assert get_device().type == "cpu"                     # the default falls back to the CPU ...
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device("cuda")                                # ... an explicit request does not
