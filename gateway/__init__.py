"""Resumable, encrypting tus upload gateway for medical imaging."""

__version__ = "0.1.0"
