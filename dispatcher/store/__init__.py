"""Where sessions outlive the process: one interface (`SessionStore`), several implementations."""

from dispatcher.store.base import LiveRecord, Recovered, SessionStore, StoredEvent, StoredSession, StoreOpenError
from dispatcher.store.memory import MemoryStore

__all__ = [
    "LiveRecord",
    "MemoryStore",
    "Recovered",
    "SessionStore",
    "StoreOpenError",
    "StoredEvent",
    "StoredSession",
]
