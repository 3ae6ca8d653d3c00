"""One exception family. Every message names the bad value, where it came from, and the fix."""


class ServelabError(Exception):
    """Base of every error servelab shows to a user; the CLI prints its message, not a traceback."""


class ParamsError(ServelabError):
    """A params file is missing, unreadable, or does not match the schema."""


class EngineError(ServelabError):
    """An engine failed to start, became unhealthy, or died; the message quotes its last log lines."""


class DeployError(ServelabError):
    """A deployment cannot go ahead: port taken, not enough GPU memory, missing binary."""


class OutputsError(ServelabError):
    """The outputs folder cannot be written: disk full, read-only, or a run that is not resumable."""


class ClientCapacityError(ServelabError):
    """The load generator cannot honour what was asked (file descriptors, schedule) and refuses to start."""


class VllmBenchError(ServelabError):
    """`vllm bench serve` could not run or failed; the message names its log."""
