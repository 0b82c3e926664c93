"""glibc's malloc set for a gateway's buffers: keep freed memory for the next ones.

The data path allocates and frees buffers of tens to hundreds of kilobytes per read (an
SSH packet of 32 KiB at every step of asyncssh, a recording's event, uvloop's reads of up
to 256 KiB). glibc's defaults give memory above 128 KiB of free heap back to the kernel
(trim) and serve large blocks from fresh mappings, so the next buffer of the same size
page-faults its pages in again, zeroed by the kernel: in a VM, each fault is a trip to
the hypervisor. Recording 32 KiB of text cost 55-68 µs of CPU that way, 27-30 with the
settings below. The price: up to `trim` bytes of freed heap stay with the process.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("accord.gateway")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def keep_freed_memory(trim: int = 64 << 20, pad: int = 16 << 20,
                      mmap_threshold: int = 16 << 20) -> bool:
    """Tune this process's malloc (glibc only: elsewhere, nothing changes); whether it
    took."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim), (M_TOP_PAD, pad)))
    if not done:
        log.debug("gateway: malloc options not taken (not glibc?)")
    return done
