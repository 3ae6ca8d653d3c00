"""servelab: which serving framework, with which settings, gives what tokens/s, latency and GPU memory."""

__version__ = "0.1.0"
