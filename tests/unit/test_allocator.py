import ctypes

import pytest

from syncd.allocator import tune_allocator


def test_glibc_takes_the_settings():
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("not glibc: no mallopt")
    assert tune_allocator() is True
