"""DomainBed's seed derivation, so that seeds and random hparams match its sweeps."""

from __future__ import annotations

import hashlib


def seed_hash(*args: object) -> int:
    """A seed in ``[0, 2**31)`` derived from ``args`` (DomainBed's ``misc.seed_hash``).

    The MD5 digest of ``str(args)``: the same arguments give the same seed in every
    process and on every machine (Python's ``hash`` is salted per process).

    Example:
        >>> seed_hash(0, "lr") == seed_hash(0, "lr")
        True
    """
    digest = hashlib.md5(str(args).encode("utf-8")).hexdigest()
    return int(digest, 16) % (2**31)
