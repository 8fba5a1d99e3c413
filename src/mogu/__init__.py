"""mogu: MoGU (Mixing of Glad and Unwilling responders) for Hugging Face causal LMs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mogu-llm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
