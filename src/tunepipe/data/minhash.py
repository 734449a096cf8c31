"""MinHash signatures of word shingles and their LSH bands, for near-duplicate detection.

Signatures are datasketch ``MinHash`` values: its ``affine32`` scheme and its permutations for the
given ``num_perm`` and seed, applied to the 32-bit shingle hashes of :func:`shingle_hashes`. They
equal ``datasketch.MinHash(num_perm, seed, hashfunc=int)`` updated with those hashes (a test checks
it), but are computed for a batch of texts with a few numpy operations over the batch's bytes:
one ``MinHash`` object per record with SHA-1 shingles costs about ten times more (140 µs a record
here). The permutations are drawn here as datasketch draws them, and the banding (``b`` bands of
``r`` rows) is the choice of datasketch's ``MinHashLSH`` optimiser with false negatives weighted
0.9, computed here too (:func:`lsh_bands`): importing datasketch, and scipy with it, costs about a
second of CPU per process. LSH proposes candidates generously, and each candidate is then
verified against its stored signature, so a record is a near duplicate only when the estimated
Jaccard similarity of its shingles with a kept record reaches the threshold. With 64 permutations
and threshold 0.85 that is 7 bands of 9 rows: a pair at similarity 0.85 becomes a candidate with
probability 0.84, at 0.9 with 0.97, at 0.95 with 0.999 (datasketch's default weighting gives 4
bands of 15 rows: 0.31, 0.60 and 0.92).

The records' membership (which kept record a record duplicates) is :mod:`tunepipe.data.dedupe`'s.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

_U64 = np.uint64

_LSH_WEIGHTS = (0.1, 0.9)  # false positives, false negatives
_TIE = 1e-6  # closer than this, datasketch itself decides (scipy's quad is accurate to about 1e-8)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for a similarity threshold, from datasketch's optimiser, favouring recall.

    datasketch's ``MinHashLSH(threshold, num_perm, weights=(0.1, 0.9))`` minimises 0.1 × P(false
    positive) + 0.9 × P(false negative) over every b × r ≤ num_perm, integrating the two
    probabilities with scipy's ``quad``. Importing datasketch and scipy costs about a second of CPU,
    so the integrals are computed here with Gauss-Legendre quadrature (within 1e-10 of quad's; a
    test checks the choice against datasketch), and datasketch is asked only when the best two
    settings come within :data:`_TIE` of each other.
    """
    pairs, fp, fn = _band_errors(threshold, num_perm)
    error = _LSH_WEIGHTS[0] * fp + _LSH_WEIGHTS[1] * fn
    best = int(np.argmin(error))  # the first of equal minima, as datasketch's loop keeps it
    if len(error) > 1 and np.partition(error, 1)[1] - error[best] < _TIE:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
        return int(lsh.b), int(lsh.r)
    b, r = (int(v) for v in pairs[best])
    if b < 2:
        raise ValueError("The number of bands are too small (b < 2)")  # what MinHashLSH says
    return b, r


def _band_errors(threshold: float, num_perm: int, panels: int = 16,
                 nodes: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (b, r) with b × r ≤ num_perm, in datasketch's order, with P(false positive) and P(false negative).

    A pair at similarity s becomes a candidate with probability 1 - (1 - s^r)^b; the probabilities
    are its integral below the threshold and that of the complement above it (composite
    Gauss-Legendre quadrature: ``panels`` intervals of ``nodes`` points each).
    """
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)])
    b = pairs[:, :1].astype(float)
    r = pairs[:, 1:].astype(float)
    x, w = np.polynomial.legendre.leggauss(nodes)

    def integral(f: Any, lo: float, hi: float) -> np.ndarray:
        if hi <= lo:
            return np.zeros(len(pairs))
        edges = np.linspace(lo, hi, panels + 1)
        half = (edges[1:] - edges[:-1]) / 2
        s = (edges[:-1] + half)[:, None] + half[:, None] * x[None, :]
        return f(s.reshape(1, -1)) @ (half[:, None] * w[None, :]).ravel()

    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        fp = integral(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
        fn = integral(lambda s: 1 - (1 - (1 - s ** r) ** b), threshold, 1.0)
    return pairs, fp, fn


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (what datasketch applies before its affine permutations)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: an avalanching bijection on 64-bit values."""
    h = (h ^ (h >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> _U64(27))) * _U64(0x94D049BB133111EB)
    return h ^ (h >> _U64(31))


# --- word shingles, hashed -----------------------------------------------------------------------
#
# A word is a run of ASCII letters, digits and "_" and of non-ASCII characters (in the UTF-8 bytes
# of a casefolded text): punctuation and spaces separate words. A word's hash is a polynomial hash
# of its bytes mod 2**64, mixed with its length; a shingle's hash chains the hashes of ``size``
# consecutive words; a text of fewer words is one shingle. The top 32 bits of a shingle hash are
# the values fed to MinHash. :func:`shingle_hashes` is the plain-Python definition;
# :class:`MinHasher` computes the same values for a whole batch with numpy.

_M64 = (1 << 64) - 1
_BASE = 0x100000001B3  # odd, so invertible mod 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15
_CHAIN = 0xD6E8FEB86659FD93
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[list(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")] = True
_WORD_BYTE[128:] = True
_WORDS = re.compile(rb"[0-9A-Za-z_\x80-\xff]+")
_WORD_TABLE = bytes(_WORD_BYTE.astype(np.uint8))  # for bytes.translate: 1 for a word byte, else 0


def _mix64_int(h: int) -> int:
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def _word_hash(word: bytes) -> int:
    h = 0
    for i, byte in enumerate(word):
        h = (h + byte * pow(_BASE, i, 1 << 64)) & _M64
    return _mix64_int((h + len(word) * _GOLDEN) & _M64)


def shingle_hashes(text: str, size: int) -> list[int]:
    """The 32-bit hashes of a text's word ``size``-grams (plain Python; the definition)."""
    hashes = [_word_hash(w) for w in _WORDS.findall(text.encode("utf-8", "surrogatepass"))]
    k = min(size, len(hashes))
    out = []
    for i in range(len(hashes) - k + 1) if hashes else ():
        h = hashes[i]
        for j in range(1, k):
            h = _mix64_int((h * _CHAIN + hashes[i + j]) & _M64)
        out.append(h >> 32)
    return out


@lru_cache(maxsize=None)
def _datasketch_2() -> bool:
    """Whether datasketch 2.0 or later is installed (its affine32 scheme), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = version("datasketch").split(".")[0]
    except PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 2


class _Powers:
    """BASE**i and BASE**-i mod 2**64 for i < n, grown on demand (one table per process, see :data:`_POWERS`)."""

    def __init__(self) -> None:
        self.tables = (np.ones(0, dtype=_U64), np.ones(0, dtype=_U64))  # (up, down), replaced together

    def need(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(up, down), at least ``n`` long."""
        tables = self.tables
        if n > len(tables[0]):
            n = max(n, (1 << 20) + 1)
            up = np.cumprod(np.concatenate([[_U64(1)], np.full(n - 1, _BASE, dtype=_U64)]), dtype=_U64)
            down = np.cumprod(np.concatenate([[_U64(1)], np.full(n - 1, _BASE_INV, dtype=_U64)]), dtype=_U64)
            self.tables = tables = (up, down)
        return tables


_POWERS = _Powers()  # shared by every MinHasher of the process


class MinHasher:
    """datasketch MinHash signatures of word shingles, for a batch of texts at once.

    The values equal ``datasketch.MinHash(num_perm, seed, hashfunc=int)`` updated with
    :func:`shingle_hashes` (datasketch's affine32 scheme and permutations; a test checks it).
    Building one ``MinHash`` per record instead costs about ten times more. ``chunk_bytes`` and
    ``chunk`` bound the temporary arrays (text bytes hashed at a time; shingles × num_perm).
    """

    def __init__(self, num_perm: int = 64, shingle_size: int = 3, seed: int = 1,
                 chunk_bytes: int = 1 << 20, chunk: int = 1 << 14) -> None:
        if not _datasketch_2():
            raise RuntimeError("near-duplicate detection needs datasketch 2.0 or later (its affine32 "
                               "MinHash scheme): pip install 'datasketch>=2.0'")
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        # datasketch's affine32 permutations (MinHash._init_permutations), drawn the same way here:
        # importing datasketch (and scipy with it) costs about a second of CPU in every process
        gen = np.random.RandomState(seed)
        self._a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self._b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        self._chunk_bytes = chunk_bytes
        self._chunk = chunk
        _POWERS.need(chunk_bytes + 1)  # once per process (forked workers inherit the tables)

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures, has_words): one row of ``num_perm`` uint32 per text; False for a text without words."""
        out = np.full((self.num_perm, len(texts)), 0xFFFFFFFF, dtype=np.uint32)  # one row per permutation
        has = np.zeros(len(texts), dtype=bool)
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        lo = 0
        while lo < len(encoded):
            hi, size = lo + 1, len(encoded[lo])
            while hi < len(encoded) and size + len(encoded[hi]) + 1 <= self._chunk_bytes:
                size += len(encoded[hi]) + 1
                hi += 1
            hashes, owner = self._shingles(encoded[lo:hi])
            if len(hashes):
                rows = lo + owner
                has[rows] = True
                self._minhash(hashes, rows, out)
            lo = hi
        return np.ascontiguousarray(out.T), has

    def _shingles(self, docs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes (uint32) of some texts, and the index of the text each belongs to (sorted)."""
        data = b"\x00".join(docs)
        buf = np.frombuffer(data, dtype=np.uint8)
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        doc_start = np.zeros(len(docs), dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=doc_start[1:])
        up, down = _POWERS.need(len(buf) + 1)
        word = np.frombuffer(data.translate(_WORD_TABLE), dtype=np.int8)
        edges = np.diff(word, prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        if not len(starts):
            return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
        prefix = np.zeros(len(buf) + 1, dtype=_U64)
        np.cumsum(buf * up[:len(buf)], out=prefix[1:])
        words = (prefix[ends] - prefix[starts]) * down[starts]
        words = _mix64(words + (ends - starts).astype(_U64) * _U64(_GOLDEN))
        # words per text (a word never spans the separator between two texts), and each word's text
        counts = np.diff(np.searchsorted(starts, doc_start), append=len(starts))
        owner = np.repeat(np.arange(len(docs)), counts)
        first = np.cumsum(counts) - counts
        k = self.shingle_size
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        n = len(words)
        if n >= k:  # full windows of k words inside one text
            m = n - k + 1
            h = words[:m].copy()
            for j in range(1, k):
                h = _mix64(h * _U64(_CHAIN) + words[j:m + j])
            inside = owner[:m] == owner[k - 1:]
            parts.append((h[inside], owner[:m][inside]))
        for c in range(1, k):  # texts of fewer than k words: one shingle of all of them
            short = np.nonzero(counts == c)[0]
            if len(short):
                h = words[first[short]]
                for j in range(1, c):
                    h = _mix64(h * _U64(_CHAIN) + words[first[short] + j])
                parts.append((h, short))
        if len(parts) == 1:  # already in text order
            hashes, owners = parts[0]
            return (hashes >> _U64(32)).astype(np.uint32), owners
        hashes = np.concatenate([p[0] for p in parts])
        owners = np.concatenate([p[1] for p in parts])
        order = np.argsort(owners, kind="stable")
        return (hashes[order] >> _U64(32)).astype(np.uint32), owners[order]

    def _minhash(self, hashes: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """Fold the permuted shingle hashes into columns ``rows`` of ``out`` (num_perm, texts); ``rows`` sorted.

        Permutations along the first axis: each one's values for a chunk of shingles are contiguous,
        so the per-text minimum (``reduceat``) runs over contiguous memory, in a reused buffer.
        """
        hv = _fmix32(hashes)
        a = self._a[:, None]
        b = self._b[:, None]
        buf = np.empty((self.num_perm, min(self._chunk, len(hv))), dtype=np.uint32)
        for lo in range(0, len(hv), self._chunk):
            hi = min(lo + self._chunk, len(hv))
            part = rows[lo:hi]
            seg = np.concatenate([[0], np.flatnonzero(part[1:] != part[:-1]) + 1])
            phv = buf[:, :hi - lo]
            np.multiply(a, hv[None, lo:hi], out=phv)
            phv += b
            targets = part[seg]
            out[:, targets] = np.minimum(out[:, targets], np.minimum.reduceat(phv, seg, axis=1))


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: each band's ``rows`` values (and the band's number) hashed together."""
    n = signatures.shape[0]
    sig = signatures[:, :bands * rows].astype(_U64).reshape(n, bands, rows)
    seeds = np.array([(b + 1) * 0x9E3779B97F4A7C15 % (1 << 64) for b in range(bands)], dtype=_U64)
    h = np.repeat(seeds[None, :], n, axis=0)
    for j in range(rows):  # all bands at once, row by row
        h = _mix64(h ^ sig[:, :, j])
    return h
