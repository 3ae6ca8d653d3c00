"""The one clock of a run: CLOCK_MONOTONIC in nanoseconds, shared by every process on the host."""

import time
from datetime import UTC, datetime


def now_ns() -> int:
    """Monotonic time in ns; comparable across processes of one host (CLOCK_MONOTONIC)."""
    return time.monotonic_ns()


def wall_anchor() -> dict[str, object]:
    """A pair (monotonic ns, UTC ISO time) taken together, so monotonic stamps can be placed in wall time."""
    monotonic = time.monotonic_ns()
    return {"monotonic_ns": monotonic, "utc": datetime.now(UTC).isoformat()}
