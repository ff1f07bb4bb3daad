"""Remembered API-key authentications, for the metering routes.

Authenticating a key is a read transaction of its own, as costly as the metering it
guards. The metering routes remember who a key is for `ttl` seconds and confirm, inside
the transaction that meters, that the key is still not revoked (`service.is_live`): a
revoked key meters nothing, on any process, from the moment its revocation commits.
Only valid keys are remembered, at most `size` of them.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from tokenadmin.auth.principal import Principal


class KeyCache:
    def __init__(self, *, ttl: float = 60.0, size: int = 10_000) -> None:
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires, principal = entry
        if expires < time.monotonic():
            del self._entries[key_hash]
            return None
        return principal

    def put(self, key_hash: str, principal: Principal) -> None:
        self._entries[key_hash] = (time.monotonic() + self._ttl, principal)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
