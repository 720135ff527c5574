"""The engine's waiting line, shared fairly: between senders (API keys), then between the
requests of a sender, never first come first served by generation.

A request with `n` choices or many prompts is one group of generations. When a slot frees,
the sender, then the group, that holds the fewest slots takes it (ties in turn). A parked
sequence (one the engine took out of its batch to give its slot to someone holding fewer)
waits here too, at the front of its group, with its recurrent state: it resumes where it
stopped, with no prompt to read again.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator

from app.generation.messages import GenerationSpec
from app.generation.rows import Seq

__all__ = ["FairQueue", "Share", "group_of", "share_of"]

Waiting = GenerationSpec | Seq
# (slots held by the sender, slots held by the request): smaller is served first.
Share = tuple[int, int]


def group_of(spec: GenerationSpec) -> int:
    """The group a generation shares its slots with (its own when it has none)."""
    return spec.group if spec.group >= 0 else -1 - spec.id


def _spec(item: Waiting) -> GenerationSpec:
    return item.spec if isinstance(item, Seq) else item


def share_of(spec: GenerationSpec, tenants: Counter[str], groups: Counter[int]) -> Share:
    """What a generation's sender and request hold, given the slots held by each."""
    return tenants[spec.tenant], groups[group_of(spec)]


class FairQueue:
    """Waiting generations by sender, then by request; see the module's docstring."""

    def __init__(self) -> None:
        self._tenants: dict[str, dict[int, deque[Waiting]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Waiting]:
        for groups in self._tenants.values():
            for line in groups.values():
                yield from line

    def push(self, item: Waiting, front: bool = False) -> None:
        """Queue a generation at the end of its request's line (a parked one at the front)."""
        spec = _spec(item)
        line = self._tenants.setdefault(spec.tenant, {}).setdefault(group_of(spec), deque())
        if front:
            line.appendleft(item)
        else:
            line.append(item)
        self._size += 1

    def neediest(self, tenants: Counter[str], groups: Counter[int]) -> tuple[Share, str] | None:
        """The share and sender of the waiting request that holds the fewest slots (None:
        nobody waits)."""
        best: tuple[Share, str] | None = None
        for tenant, lines in self._tenants.items():
            for group in lines:
                share = (tenants[tenant], groups[group])
                if best is None or share < best[0]:
                    best = (share, tenant)
        return best

    def pop(self, tenants: Counter[str], groups: Counter[int]) -> Waiting:
        """Take the next generation of the sender, then the request, holding the fewest slots
        (the counts are the caller's, and updated here for what is taken)."""
        tenant = min(self._tenants, key=lambda t: tenants[t])  # first in turn among equals
        lines = self._tenants.pop(tenant)
        group = min(lines, key=lambda g: groups[g])
        line = lines.pop(group)
        item = line.popleft()
        if line:
            lines[group] = line  # to the back of the sender's turn
        if lines:
            self._tenants[tenant] = lines  # to the back of the turn
        self._size -= 1
        tenants[tenant] += 1
        groups[group] += 1
        return item

    def drop(self, ids: Iterable[int]) -> list[Waiting]:
        """Remove the given generations; the ones removed."""
        gone = set(ids)
        removed: list[Waiting] = []
        for tenant in list(self._tenants):
            lines = self._tenants[tenant]
            for group in list(lines):
                kept = deque(i for i in lines[group] if _spec(i).id not in gone)
                removed += [i for i in lines[group] if _spec(i).id in gone]
                if kept:
                    lines[group] = kept
                else:
                    del lines[group]
            if not lines:
                del self._tenants[tenant]
        self._size -= len(removed)
        return removed
