"""Baseline: the python.localhost tenant's WSGI hello served natively by Granian (no isolation)."""

from __future__ import annotations

from tenantvm.examples.python.hello import app

__all__ = ["app"]
