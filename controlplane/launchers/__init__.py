"""Launchers run replicas: `process` (this host, default) and `ray` (a Ray cluster, lazy import)."""

from __future__ import annotations

import importlib

from lorafleet.controlplane.launchers.base import Launcher
from lorafleet.controlplane.settings import Settings


def create_launcher(settings: Settings) -> Launcher:
    """The launcher `settings.launcher` names. `ray` is imported only when selected.

    The Ray module must expose `create_launcher(settings) -> Launcher`.
    """
    if settings.launcher == "process":
        from lorafleet.controlplane.launchers.process import ProcessLauncher

        return ProcessLauncher.from_settings(settings)
    module = importlib.import_module(f"lorafleet.controlplane.launchers.{settings.launcher}")
    return module.create_launcher(settings)
