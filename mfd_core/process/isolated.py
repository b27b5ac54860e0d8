"""Isolated learning: every node learns alone, nothing is sent. The floor."""
from __future__ import annotations

from .base import PolicySettings, SharingPolicy


class IsolatedSettings(PolicySettings):
    """Isolated learning has no settings of its own."""


class IsolatedPolicy(SharingPolicy):
    """No sharing at all."""

    name = "isolated"
    Settings = IsolatedSettings
