"""Bytes as a model ships: its saved state dict (or any artifact), raw and gzip-compressed.

gzip shows what zeros and repeats are worth on the wire; every record and slider compresses the
same way (``gzip_compress``), so sizes compare."""
from __future__ import annotations

import io

import torch
import torch.nn as nn

__all__ = ["state_dict_bytes", "GZIP_CHUNK", "saved_sizes", "saved_size", "gzip_compress",
           "gzip_size", "artifact_sizes"]


def state_dict_bytes(model: nn.Module) -> bytes:
    """The bytes ``torch.save(model.state_dict())`` writes: what a PyTorch model ships as."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


GZIP_CHUNK = 8 << 20


class _SizeOnly(io.RawIOBase):
    """A write-only file that keeps only the size of what is saved to it, raw and gzipped: a
    record needs no copy of a model's tens of MB (a save into memory peaks at about three)."""

    def __init__(self, gzip: bool = True):
        self.gzip, self.raw, self.gz, self.pending = gzip, 0, 0, bytearray()

    def writable(self):
        return True

    def write(self, b):
        n = memoryview(b).nbytes
        self.raw += n
        if not self.gzip:
            return n
        self.pending += b
        while len(self.pending) >= GZIP_CHUNK:  # the same members gzip_compress() cuts
            self.gz += len(_gzip_member(memoryview(self.pending)[:GZIP_CHUNK]))
            del self.pending[:GZIP_CHUNK]
        return n

    def sizes(self) -> tuple[int, int]:
        if self.gzip and (self.pending or not self.raw):
            self.gz += len(_gzip_member(bytes(self.pending)))
            self.pending = bytearray()
        return self.raw, self.gz


def saved_sizes(model: nn.Module) -> tuple[int, int]:
    """``artifact_sizes(state_dict_bytes(model))`` without holding the saved bytes."""
    out = _SizeOnly()
    torch.save(model.state_dict(), out)
    return out.sizes()


def saved_size(model: nn.Module | dict) -> int:
    """``len(state_dict_bytes(model))`` (or of a state dict as given), neither holding nor
    compressing the bytes."""
    out = _SizeOnly(gzip=False)
    torch.save(model if isinstance(model, dict) else model.state_dict(), out)
    return out.raw


def _gzip_member(piece) -> bytes:
    import zlib

    z = zlib.compressobj(1, zlib.DEFLATED, 31, 8, zlib.Z_RLE)  # wbits 31: a gzip member
    return z.compress(piece) + z.flush()


def gzip_compress(chunks, chunk_bytes: int = GZIP_CHUNK) -> bytes:
    """The chunks as one multi-member .gz file (``gzip -d`` reads it whole).

    zlib level 1 with the run-length strategy, two chunks at a time (zlib releases the GIL):
    on weights it is about five times faster than gzip's default level and within a few percent
    of its size, so a slider can afford it, and every record and slider in the workbook uses it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return b"".join(pool.map(_gzip_member, _pieces(chunks, chunk_bytes)))


def gzip_size(chunks, chunk_bytes: int = GZIP_CHUNK) -> int:
    """``len(gzip_compress(chunks))``, keeping no compressed bytes (tens of MB for a model)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(lambda piece: len(_gzip_member(piece)), _pieces(chunks, chunk_bytes)))


def _pieces(chunks, chunk_bytes: int) -> list[memoryview]:
    """Each chunk's bytes cut into ``chunk_bytes`` pieces: views, not copies."""
    pieces = []
    for c in chunks:
        if isinstance(c, torch.Tensor):
            c = c.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        c = memoryview(c).cast("B")
        pieces += [c[i:i + chunk_bytes] for i in range(0, max(len(c), 1), chunk_bytes)]
    return pieces


def artifact_sizes(blob: bytes) -> tuple[int, int]:
    """Raw and gzip-compressed size; gzip shows what zeros and repeats are worth on the wire."""
    return len(blob), gzip_size([blob])
