"""Hashes used for provenance: files, arrays, canonical JSON, keyed identifier hashing."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace variance: stable input for fingerprints."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def keyed_hash(value: str, key: bytes, length: int = 16) -> str:
    """HMAC-SHA256 pseudonym for an identifier (patient or image id); same key -> same pseudonym."""
    return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:length]


def read_key(path) -> bytes:
    data = Path(path).read_bytes().strip()
    if len(data) < 16:
        from .errors import ConfigError

        raise ConfigError(f"{path}: hash key too short ({len(data)} bytes; need at least 16)")
    return data
