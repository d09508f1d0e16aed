"""Byte-exact port of the ``random <count> <seed>`` generator kubo's sharness tests use.

kubo's ``test/sharness/t0040-add-and-cat.sh`` publishes the CIDs ``ipfs add`` prints
for files made by ``random 5242880 41`` and ``random 104857600 42`` (jbenet/go-random's
``WritePseudoRandomBytes``, built on Go's ``math/rand``).  To test our DAG builder
against those published CIDs we regenerate the same bytes here.

Facts used (from the Go and go-random sources; no code copied):

* Go's ``math/rand`` source is an additive lagged-Fibonacci generator over 64-bit
  words with lags 607 and 273 (each output is the sum of the outputs 607 and 273
  steps back).  ``Int63`` is the low 63 bits of an output, ``Uint32`` is
  ``Int63 >> 31``.
* ``Seed(s)`` fills the 607-word state from the Lehmer generator
  ``x <- 48271 * x mod (2**31 - 1)`` (20 discarded steps, then three draws per word
  combined as ``x1 << 40 ^ x2 << 20 ^ x3``) XOR-ed with the constant table
  ``rngCooked``.
* ``rngCooked`` is, per Go's ``gen_cooked.go``, the state of the same lagged-Fibonacci
  generator after 7.8e12 steps from ``srand(1)`` (whose words are
  ``x1 << 20 ^ x2 << 10 ^ x3``).  The recurrence is linear, so instead of storing the
  table we compute it as ``x**N mod (x**607 - x**334 - 1)`` over Z/2**64 (square and
  multiply), in well under a second.
* go-random writes each ``Uint32`` as 4 little-endian bytes.  (One revision of its
  ``lib.go`` skips every fifth byte; the SHA-1 digests t0040 publishes for its files,
  ``1114 5620fb92...`` and ``1114 885b197b...``, match the stream without skips, which
  is what this module makes and what the tests check first.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

_LEN = 607
_TAP = 273
_M31 = (1 << 31) - 1
_MASK64 = (1 << 64) - 1
_COOKED_STEPS = 7_800_000_000_000


def _lehmer(x: int) -> int:
    return (48271 * x) % _M31


def _seed_words(seed: int, shifts: tuple[int, int]) -> list[int]:
    seed %= _M31
    if seed == 0:
        seed = 89482311
    x = seed
    words = []
    for i in range(-20, _LEN):
        x = _lehmer(x)
        if i >= 0:
            u = x << shifts[0]
            x = _lehmer(x)
            u ^= x << shifts[1]
            x = _lehmer(x)
            u ^= x
            words.append(u & _MASK64)
    return words


def _polymulmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a * b) mod (x**607 - x**334 - 1), coefficients mod 2**64 (uint64 wraps)."""
    prod = np.convolve(a, b)  # integer convolution wraps modulo 2**64
    return _reduce(prod)


def _reduce(prod: np.ndarray) -> np.ndarray:
    prod = prod.copy()
    # x**k for k >= 607 becomes x**(k-607) + x**(k-273); fold from the top down.
    for k in range(len(prod) - 1, _LEN - 1, -1):
        c = prod[k]
        if c:
            prod[k - _LEN] += c
            prod[k - _TAP] += c
    out = np.zeros(_LEN, dtype=np.uint64)
    out[: min(_LEN, len(prod))] = prod[:_LEN]
    return out


def _state_after(initial: list[int], steps: int) -> list[int]:
    """The 607-word register after ``steps`` outputs, starting from ``initial``."""
    # Sequence A: A[j] = initial[(333 - j) mod 607] for j < 607 and
    # A[j] = A[j-607] + A[j-273]; output k (k >= 1) is A[k + 606] and is stored at
    # register index (334 - k) mod 607.
    a0 = np.array([initial[(333 - j) % _LEN] for j in range(_LEN)], dtype=np.uint64)
    result = np.zeros(_LEN, dtype=np.uint64)
    result[0] = 1
    base = np.zeros(_LEN, dtype=np.uint64)
    base[1] = 1
    n = steps
    with np.errstate(over="ignore"):
        while n:
            if n & 1:
                result = _polymulmod(result, base)
            n >>= 1
            if n:
                base = _polymulmod(base, base)
        register = [0] * _LEN
        coeffs = result  # x**steps mod P: A[steps] as a combination of A[0..606]
        for t in range(_LEN):
            k = steps - 606 + t  # A[steps + t] is output k
            value = int(np.dot(coeffs, a0)) & _MASK64
            register[(334 - k) % _LEN] = value
            shifted = np.zeros(_LEN + 1, dtype=np.uint64)
            shifted[1:] = coeffs
            coeffs = _reduce(shifted)
    return register


@functools.cache
def rng_cooked() -> tuple[int, ...]:
    """Go's ``rngCooked`` table as unsigned 64-bit words."""
    return tuple(_state_after(_seed_words(1, (20, 10)), _COOKED_STEPS))


def _outputs(seed: int, count: int, piece: int = 1 << 20) -> Iterator[np.ndarray]:
    """The first ``count`` 64-bit outputs of ``rand.NewSource(seed)``, ``piece`` at a time."""
    cooked = rng_cooked()
    vec = [w ^ c for w, c in zip(_seed_words(seed, (40, 20)), cooked, strict=True)]
    # history[j]: the last 607 outputs, oldest first (initially the seeded register
    # in the order the generator consumes it).
    history = np.array([vec[(333 - j) % _LEN] for j in range(_LEN)], dtype=np.uint64)
    left = count
    with np.errstate(over="ignore"):
        while left:
            n = min(piece, left)
            seq = np.empty(_LEN + n, dtype=np.uint64)
            seq[:_LEN] = history
            j = _LEN
            while j < _LEN + n:
                step = min(_TAP, _LEN + n - j)  # output j needs j-273: 273 at a time
                seq[j : j + step] = (
                    seq[j - _LEN : j - _LEN + step] + seq[j - _TAP : j - _TAP + step]
                )
                j += step
            history = seq[-_LEN:].copy()
            left -= n
            yield seq[_LEN:]


def go_random_stream(count: int, seed: int, piece: int = 1 << 22) -> Iterator[bytes]:
    """Exactly the bytes ``random <count> <seed>`` (jbenet/go-random) writes, in pieces."""
    words_left = -(-count // 4)
    bytes_left = count
    mask = np.uint64((1 << 63) - 1)
    for out in _outputs(seed, words_left, max(1, piece // 4)):
        data = ((out & mask) >> np.uint64(31)).astype("<u4").tobytes()[:bytes_left]
        bytes_left -= len(data)
        yield data


def go_random_bytes(count: int, seed: int) -> bytes:
    """All of :func:`go_random_stream` at once."""
    return b"".join(go_random_stream(count, seed))
