"""lbsolo: a one-server Platform-as-a-Service in one Python process."""

__version__ = "0.1.0"
