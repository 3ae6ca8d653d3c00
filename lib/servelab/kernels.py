"""The notebooks' kernels as servelab starts them: their own stderr goes to the run's log, not the console."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import Unicode


class KernelWithLoggedStderr(AsyncKernelManager):
    """A kernel whose stderr is appended to `stderr_path`: a kernel torn down by Ctrl-C reports the teardown (ZMQ's
    "Socket operation on non-socket") there, and the console keeps servelab's one line about the interrupt."""

    stderr_path = Unicode("", help="file the kernel's stderr is appended to; empty: the console").tag(config=True)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        if not self.stderr_path:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        path = Path(self.stderr_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as log:
            kw["stderr"] = log
            return await super()._async_launch_kernel(kernel_cmd, **kw)
