"""ScalingNote: LLM dual-tower retrieval with a distilled query encoder for online serving."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("scalingnote")  # the installed distribution's (pyproject.toml)
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
