"""Hooks that own their handles (fastai's ``Hook`` style): ``remove()`` is safe to call twice, and
``Hooks`` removes many together as a context manager."""
from __future__ import annotations


class Hook:
    """One registered hook; ``remove()`` is safe to call twice."""

    def __init__(self, handle):
        self.handle, self.removed = handle, False

    def remove(self) -> None:
        if not self.removed:
            self.handle.remove()
            self.removed = True


class Hooks:
    """Many hooks, removed together; a context manager."""

    def __init__(self):
        self.items: list[Hook] = []

    def add(self, handle) -> Hook:
        h = Hook(handle)
        self.items.append(h)
        return h

    def remove(self) -> None:
        if self.items:  # (a Monitor calls this at every step between its recorded ones)
            for h in self.items:
                h.remove()
            self.items = []

    def __len__(self) -> int:
        return sum(not h.removed for h in self.items)

    def __bool__(self) -> bool:
        """Any hook still registered (without counting them all)."""
        return any(not h.removed for h in self.items)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
