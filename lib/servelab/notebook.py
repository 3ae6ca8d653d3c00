"""The notebooks' entry points now live in `servelab.lab`; this name stays for notebooks written against it."""

from __future__ import annotations

from servelab.lab import deployment_table, idle_memory_mib, report_run

__all__ = ["deployment_table", "idle_memory_mib", "report_run"]
