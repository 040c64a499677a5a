"""tutorsrv: a real-time AI tutoring server."""

__version__ = "0.1.0"
