import ctypes

import pytest
import torch

from alexnet_exp.host_memory import GLIBC, keep_freed_memory


class _MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo() -> _MallInfo2:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    return mallinfo2()


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_tensors_stay_in_the_heap():
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
    size = 64 * 2**20
    x = torch.ones(size // 4)
    live = _mallinfo()
    # glibc's default would mmap a block this size and unmap it at free
    assert live.hblkhd < size
    del x
    freed = _mallinfo()
    assert freed.arena >= live.arena  # the heap was not trimmed
    assert freed.fordblks >= size  # the block is free in the heap, for the next step's activations


@pytest.mark.skipif(GLIBC, reason="other C libraries")
def test_elsewhere_it_declines():
    assert keep_freed_memory() is False
