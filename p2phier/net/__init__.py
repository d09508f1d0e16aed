"""The network layer: the only part of p2phier that imports trio and py-libp2p.

Owns the libp2p host (:mod:`.host`: TCP + Noise + Yamux, deadlines on every
dial and stream open), the identity bridge (:mod:`.keys`), deadline-bounded
framed stream I/O (:mod:`.streams`) and the Bitswap driver (:mod:`.bitswap`)
that runs the sans-IO core of :mod:`p2phier.bitswap` over libp2p streams.
:mod:`.testing` starts several in-process nodes for fast tests.
"""

from __future__ import annotations

from .bitswap import Bitswap, BitswapConfig, open_bitswap
from .host import DialError, Host, HostConfig, PeerAddr, open_host
from .keys import identity_from_keypair, keypair_from_identity
from .streams import StreamClosedError, StreamTruncatedError

__all__ = [
    "Bitswap",
    "BitswapConfig",
    "DialError",
    "Host",
    "HostConfig",
    "PeerAddr",
    "StreamClosedError",
    "StreamTruncatedError",
    "identity_from_keypair",
    "keypair_from_identity",
    "open_bitswap",
    "open_host",
]
