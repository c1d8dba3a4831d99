"""Launchers run replicas: `process` (this host, default) and `ray` (a Ray cluster, lazy import)."""

from __future__ import annotations

import importlib

from lorafleet.controlplane.launchers.base import Launcher
from lorafleet.controlplane.settings import Settings


def create_launcher(settings: Settings) -> Launcher:
    """The launcher `settings.launcher` names. `ray` is imported only when selected.

    A launcher module exposes `create_launcher(settings) -> Launcher`, or a `<Name>Launcher`
    class with a `from_settings(settings)` constructor (the Ray module's `RayLauncher`).
    """
    if settings.launcher == "process":
        from lorafleet.controlplane.launchers.process import ProcessLauncher

        return ProcessLauncher.from_settings(settings)
    module = importlib.import_module(f"lorafleet.controlplane.launchers.{settings.launcher}")
    if hasattr(module, "create_launcher"):
        return module.create_launcher(settings)
    launcher_class = getattr(module, f"{settings.launcher.capitalize()}Launcher")
    return launcher_class.from_settings(settings)
