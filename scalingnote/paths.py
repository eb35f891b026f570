"""Default locations: shared data next to the checkout, a cache for prepared models."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Root of the shared BEIR datasets (``SCALINGNOTE_DATA_DIR``, else ``../shared/data``)."""
    env = os.environ.get("SCALINGNOTE_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def cache_root() -> Path:
    """Where prepared built-in models live (``SCALINGNOTE_CACHE_DIR``, else ``~/.cache/scalingnote``)."""
    env = os.environ.get("SCALINGNOTE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "scalingnote"


def index_cache_root() -> Path:
    """Indexes shared across runs (``SCALINGNOTE_INDEX_CACHE_DIR``, else ``<cache>/indexes``)."""
    env = os.environ.get("SCALINGNOTE_INDEX_CACHE_DIR")
    return Path(env) if env else cache_root() / "indexes"
