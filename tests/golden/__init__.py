"""Loaders for the golden vectors in ``protocol/vectors`` and the byte recipes they use.

Each CID vector names the bytes it was made from by a *recipe* rather than by the
bytes themselves (some inputs are a gigabyte), so that the exact input of a
published kubo test can be regenerated here:

* ``hex``: the bytes are given inline as hex.
* ``zeros``: ``size`` zero bytes.
* ``byte-cycle``: bytes ``0, 1, ..., 255, 0, 1, ...`` up to ``size``.
* ``go-random``: ``random <size> <seed>`` from jbenet/go-random, which kubo's sharness
  tests use (see :mod:`tests.golden.gorandom`).
* ``chacha20``: kubo's ``test/cli/testutils/random_deterministic.go``: the ChaCha20
  (RFC 8439) keystream with key ``sha256(seed as UTF-8)``, an all-zero 12-byte
  nonce and block counter 0, truncated to ``size``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from tests.golden.gorandom import go_random_stream

VECTORS_DIR = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
PIECE = 1 << 22


def load(name: str) -> Any:
    """Parse ``protocol/vectors/<name>.json``."""
    with open(VECTORS_DIR / f"{name}.json", encoding="utf-8") as fh:
        return json.load(fh)


def _repeat(unit: bytes, size: int) -> Iterator[bytes]:
    block = unit * (PIECE // len(unit))
    left = size
    while left:
        n = min(len(block), left)
        yield block[:n]
        left -= n


def _chacha20(seed: str, size: int) -> Iterator[bytes]:
    key = hashlib.sha256(seed.encode("utf-8")).digest()
    # cryptography's 16-byte ChaCha20 nonce is the 32-bit little-endian block
    # counter followed by the 96-bit RFC 8439 nonce: all zero here.
    enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    left = size
    zeros = bytes(PIECE)
    while left:
        n = min(PIECE, left)
        yield enc.update(zeros[:n])
        left -= n


def recipe_stream(recipe: dict[str, Any], size: int) -> Iterator[bytes]:
    """The bytes a vector's recipe describes, in pieces of at most 4 MiB."""
    kind = recipe["kind"]
    if kind == "hex":
        data = bytes.fromhex(recipe["hex"])
        if len(data) != size:
            raise ValueError(f"hex recipe has {len(data)} bytes, vector says {size}")
        yield data
    elif kind == "zeros":
        yield from _repeat(b"\0", size)
    elif kind == "byte-cycle":
        yield from _repeat(bytes(range(256)), size)
    elif kind == "go-random":
        yield from go_random_stream(size, int(recipe["seed"]), PIECE)
    elif kind == "chacha20":
        yield from _chacha20(str(recipe["seed"]), size)
    else:
        raise ValueError(f"unknown recipe kind {kind!r}")


def recipe_bytes(recipe: dict[str, Any], size: int) -> bytes:
    return b"".join(recipe_stream(recipe, size))
