"""Testing your own Space (docs/testing.md): the pytest plugin's fixtures, a grid that kills owners, history checks."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spacegrid.testing.checker import CheckResult
    from spacegrid.testing.eventually import eventually, eventually_sync
    from spacegrid.testing.grid import Failover, GridUnderTest
    from spacegrid.testing.recorder import History, HistoryViolation, Recording

__all__ = ["CheckResult", "Failover", "GridUnderTest", "History", "HistoryViolation", "Recording", "eventually",
           "eventually_sync"]

# imported on first use: the pytest plugin imports this package in every pytest run where spacegrid is installed
_LAZY = {"CheckResult": "checker", "eventually": "eventually", "eventually_sync": "eventually", "Failover": "grid",
         "GridUnderTest": "grid", "History": "recorder", "HistoryViolation": "recorder", "Recording": "recorder"}


def __getattr__(name: str) -> Any:
    """The public names, each imported from its module when first asked for."""
    if name in _LAZY:
        return getattr(import_module(f"spacegrid.testing.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'spacegrid.testing' has no attribute {name!r}")
