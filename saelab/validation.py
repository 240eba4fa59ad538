"""Shared checks for config dataclasses: clear errors naming the field and what is valid."""

from __future__ import annotations

import dataclasses
from typing import Any


def check_known_fields(cls: type, values: dict[str, Any], what: str) -> None:
    """Raise if `values` has keys that are not fields of dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; valid keys: {sorted(names)}")


def check_values(obj: Any, checks: dict[str, tuple[bool, str]], what: str) -> None:
    """checks maps field name → (is valid, description of valid values)."""
    for name, (ok, valid) in checks.items():
        if not ok:
            raise ValueError(f"invalid {what} {name}={getattr(obj, name)!r}: must be {valid}")
