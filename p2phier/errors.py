"""The one error hierarchy of p2phier.

Every error the package raises on purpose derives from :class:`P2PHierError`.
Families group errors by concern; each class also subclasses the natural
builtin (``ValueError``, ``KeyError``, ``PermissionError``...) so callers that
only know Python's own exceptions still catch them.  The CLI maps each family
to a distinct exit code (``exit_code``), so scripts can tell failures apart
without parsing messages.
"""

from __future__ import annotations


class P2PHierError(Exception):
    """Root of every deliberate p2phier error."""

    exit_code: int = 1


# --- usage and configuration -------------------------------------------------


class UsageError(P2PHierError, ValueError):
    """The user asked for something that cannot be done as asked."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file, environment variable or flag is invalid."""


class NotRegularFileError(UsageError):
    """A path that must name a regular file names a FIFO, device, socket or directory."""


class InputFileError(UsageError):
    """An input file (configuration, plan, scenario, record) is missing, unreadable, over its
    size limit (refused before it is read) or not the TOML or JSON it should be.

    Readers of :mod:`p2phier.fsutil` (``read_capped``, ``load_toml``, ``load_json``) raise it
    unless the caller names its own error class (``ConfigError``, ``PlanError``...)."""


# --- identity ----------------------------------------------------------------


class IdentityError(P2PHierError):
    """Keys and peer ids."""

    exit_code = 3


class KeyFileError(IdentityError, ValueError):
    """A key file is missing, malformed or unreadable."""


class InsecureKeyFileError(IdentityError, PermissionError):
    """A private key file is readable by other users; it is refused."""


class InvalidPeerIdError(IdentityError, ValueError):
    """A peer id string or byte form does not parse."""


# --- content addressing --------------------------------------------------------


class CIDError(P2PHierError, ValueError):
    """A content identifier is malformed or unsupported."""

    exit_code = 4


class UnixFSError(P2PHierError, ValueError):
    """A dag-pb / UnixFS node is malformed or inconsistent."""

    exit_code = 4


# --- the store -----------------------------------------------------------------


class StoreError(P2PHierError):
    """Content store failures."""

    exit_code = 5


class BlockNotFoundError(StoreError, KeyError):
    """A block (or an object's block) is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the message.
        return str(self.args[0]) if self.args else "block not found"


class BlockTooLargeError(StoreError, ValueError):
    """A block exceeds the size limit; refused before it is read in full."""


class HashMismatchError(StoreError, ValueError):
    """Bytes do not hash to the CID they are claimed to have."""


class CorruptBlockError(HashMismatchError):
    """A stored block no longer matches its CID (corruption at rest)."""


class StoreIOError(StoreError, OSError):
    """The store could not write or read its files (disk full, permissions)."""


class PinnedError(StoreError, ValueError):
    """An operation would remove pinned content."""


# --- artifacts -----------------------------------------------------------------


class ArtifactError(P2PHierError, ValueError):
    """An adapter-update artifact failed to build, parse or verify."""

    exit_code = 6


class SignatureError(ArtifactError):
    """A signature is missing or does not verify."""


class AuthorMismatchError(SignatureError):
    """The signing key does not belong to the claimed author."""


class FormatVersionError(ArtifactError):
    """A manifest or file declares a format version this build does not know."""


class ManifestError(ArtifactError):
    """A manifest is malformed or violates a limit."""


class NewerManifestError(ManifestError):
    """A manifest uses what a newer format has and this build does not know (a field, an
    encoding number): refused, but not evidence against its author (it may run a newer
    release)."""


class BaseModelMismatchError(ArtifactError):
    """An update targets a different base model than the one it is applied to."""


class MissingBlocksError(ArtifactError):
    """An artifact refers to content that is not available."""


class DecompressionError(ArtifactError):
    """A zstd frame is malformed or would exceed the size cap."""


class TensorFileError(ArtifactError):
    """A safetensors payload is hostile or inconsistent with its config."""


class LineageError(ArtifactError):
    """A delta chain is broken (missing, cyclic or mismatched parents)."""


# --- network (used by the node) -------------------------------------------------


class NetworkError(P2PHierError):
    """Peer-to-peer failures."""

    exit_code = 7


class ProtocolViolationError(NetworkError, ValueError):
    """A peer sent something the protocol forbids (oversized, malformed...)."""


class PeerTimeoutError(NetworkError, TimeoutError):
    """A peer did not answer within its deadline."""


# --- learning -------------------------------------------------------------------


class LearnError(P2PHierError):
    """Training, distillation and aggregation failures."""

    exit_code = 8
