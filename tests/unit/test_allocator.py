import ctypes

import pytest

from syncd.allocator import tune_allocator


def test_glibc_takes_the_settings():
    try:
        ctypes.CDLL(None).mallopt
    except AttributeError:
        pytest.skip("not glibc: no mallopt")
    assert tune_allocator() is True
