"Package-level checks: the install exposes the library and the console script."
import subprocess, sys
import cryoseg


def test_version():
    assert cryoseg.__version__.count(".") == 2


def test_import_core():
    from cryoseg.core import get_device, set_seed
    assert get_device("cpu").type == "cpu"
