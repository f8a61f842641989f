"""edgelab: the plumbing behind the model-compression workbook."""
__version__ = "0.1.0"


def _return_freed_tensors_to_the_os() -> None:
    """glibc keeps freed blocks of up to 32 MB for reuse, so a notebook that makes and drops a
    few copies of a 45 MB model holds on to all of them. Serving every block of 1 MB or more
    with mmap hands it back when freed: on Binder (2 GB) that is the difference."""
    import ctypes
    import sys

    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_MMAP_THRESHOLD = -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


_return_freed_tensors_to_the_os()
