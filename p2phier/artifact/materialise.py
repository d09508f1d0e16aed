"""Turning an artifact CID into a PEFT adapter directory on disk.

Owns :func:`materialise`: verify the artifact and its whole lineage (see
:mod:`p2phier.artifact.verify`), apply the deltas onto the full adapter at the
root of the chain, and write ``adapter_config.json`` + ``adapter_model.safetensors``
(float32, PEFT tensor names, ``{"format": "pt"}`` metadata; and the leaf's
``prototypes.safetensors`` where it carries one) so that
``peft.PeftModel.from_pretrained(base_model, out_dir)`` loads it.

Writes are crash-safe: a new directory is assembled under a temporary name
beside it and renamed into place (all or nothing); into an existing directory
each file is replaced atomically (temp file, fsync, rename, fsync dir),
weights first.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Collection, Iterable
from pathlib import Path

from p2phier.artifact.limits import DEFAULT_LIMITS, Limits
from p2phier.artifact.pack import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from p2phier.artifact.protofile import PROTOTYPES_FILE
from p2phier.artifact.tensors import iter_safetensors
from p2phier.artifact.verify import BlockSource, resolve
from p2phier.cid import CID
from p2phier.errors import UsageError
from p2phier.fsutil import fsync_dir, write_atomic
from p2phier.store.base import ContentStore


def materialise(
    store: ContentStore,
    cid: CID | str,
    out_dir: str | os.PathLike[str],
    *,
    expected_base_model: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    base_modules: Collection[str] | None = None,
) -> Path:
    """Verify ``cid`` with its lineage and write the adapter it stands for into ``out_dir``.

    The weights are streamed from the verified tensors into the file (no
    second copy in memory): peak memory is that of verification
    (:meth:`Limits.peak_memory`).  ``base_modules`` as for
    :func:`~p2phier.artifact.verify.resolve`.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    resolved = resolve(
        BlockSource(store).get_block,
        CID.parse(cid),
        limits=limits,
        expected_base_model=expected_base_model,
        base_modules=base_modules,
    )

    def files() -> list[tuple[str, Iterable[bytes | memoryview] | bytes]]:
        weights = iter_safetensors(resolved.tensors, {"format": "pt"})
        out: list[tuple[str, Iterable[bytes | memoryview] | bytes]] = [
            (ADAPTER_WEIGHTS, weights),
            (ADAPTER_CONFIG, resolved.config_bytes),
        ]
        if resolved.prototypes is not None:
            out.append((PROTOTYPES_FILE, resolved.prototypes))
        return out

    try:
        if out.exists():
            for name, data in files():
                write_atomic(out / name, data)
            if resolved.prototypes is None:
                # an earlier artifact's prototypes are not this one's
                (out / PROTOTYPES_FILE).unlink(missing_ok=True)
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
        tmp_dir.mkdir()
        try:
            for name, data in files():
                write_atomic(tmp_dir / name, data)
            os.rename(tmp_dir, out)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        fsync_dir(out.parent)
    except OSError as exc:
        raise UsageError(f"cannot write the adapter to {out}: {exc.strerror or exc}") from None
    return out
