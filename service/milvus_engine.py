"""The engine on the Milvus backend: serves the collection an alias points to and follows the alias (no torch).

Only the index commands move the alias (``scalingnote index rebuild|publish|rollback --backend milvus``, under
``ROOT/.lock`` together with ``ROOT/current``). The service follows it as it follows ``ROOT/current``: a new
target is opened, its space (from the collection's properties) checked against the bundle, self-checked, then
swapped in with the same leases as a FAISS generation; a rejected target leaves the old collection serving.
"""

from __future__ import annotations

import threading

from scalingnote.artifacts import check_space
from scalingnote.errors import UserError
from scalingnote.index.milvus_backend import MilvusIndex, MilvusStore
from scalingnote.runtime.bundle import BundleEncoder
from scalingnote.service.engine import Engine, Generation, bundle_encoder
from scalingnote.service.settings import Settings


class MilvusEngine(Engine):
    """Encoder + the alias's collection; swaps, leases and batches are :class:`Engine`'s (no index root)."""

    def __init__(self, encoder: BundleEncoder, store: MilvusStore) -> None:  # no Engine.__init__: no index dir
        self.encoder = encoder
        self.store = store
        self.is_root = False
        self._lock = threading.Lock()
        self._current = self.open_collection(store.resolve())

    @classmethod
    def from_settings(cls, settings: Settings) -> MilvusEngine:
        """Connect to ``settings.milvus_uri`` and serve what ``settings.milvus_alias`` points to."""
        assert settings.milvus_uri is not None  # the settings' validator
        store = MilvusStore.connect(settings.milvus_uri, settings.milvus_alias)
        return cls(bundle_encoder(settings), store)

    @property
    def follows(self) -> bool:
        return True

    def available_versions(self) -> list[str]:
        return list(self.store.collections())

    def open_collection(self, collection: str) -> Generation:
        """Open ``collection``, check its space against the bundle's and self-check it (does not serve it yet)."""
        index = MilvusIndex.open(self.store.client, collection)
        check_space(self.encoder.manifest.space, index.manifest.space, what=f"bundle {self.encoder.path}")
        self.self_check(index)
        return Generation(index, index.manifest.version, collection, index.manifest.count)

    def reload(self, version: str | None = None) -> tuple[Generation, Generation] | None:
        """Swap to the collection the alias points to now; None when already serving it."""
        if version is not None:
            raise UserError(self._moved_by_the_index_job())
        target = self.store.resolve()
        if target == self._current.name:
            return None
        gen = self.open_collection(target)
        return self.swap(gen), gen

    def rollback(self) -> tuple[Generation, Generation]:
        raise UserError(self._moved_by_the_index_job())

    def _moved_by_the_index_job(self) -> str:
        return (
            f"the milvus backend serves what alias {self.store.alias!r} points to: move it with "
            "`scalingnote index rollback --backend milvus --root ROOT [--version ID]`"
        )

    def watch_target(self) -> str | None:
        """The collection the alias points to now."""
        return self.store.resolve()
