"""Which replica serves a request: least outstanding requests, with adapter affinity, bounded.

The choice is consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018),
with rendezvous hashing as the hash:

* every replica gets a rank per adapter, `sha1(adapter + replica key)`; an adapter's preferred
  replicas are those of highest rank. Adding or removing a replica moves only the adapters whose
  first choice it was, so each adapter keeps landing on the replicas whose slots already hold it;
* the bound: no replica takes a request while it has `ceil(c × (outstanding + 1) / replicas)`
  outstanding requests or more (`c` = `GATEWAY_LOAD_FACTOR`, 1.5 by default). A hot adapter
  therefore spills to its next-ranked replica (always the same one, which then keeps it loaded
  too) instead of queueing on one replica while others idle; some replica is always under the
  bound. A larger `c` keeps adapters home longer (fewer adapter loads), a smaller one balances
  closer (benchmarks/gateway.py measures both sides);
* replicas that *report* holding the adapter (their `/v1/models`) come first, least outstanding
  first: the adapter is already in their GPU slots, so serving it costs no load;
* the base model (no adapter) needs no slot: least outstanding requests, ties broken by rank.

Power-of-two-choices was the alternative: it balances load as well, but it picks replicas at
random, so with 16 adapters over 2 replicas each replica ends up loading every adapter and evicting
under `--max-loaded-adapters`; the bounded consistent hash keeps the working sets apart.

`round_robin` (`GATEWAY_ROUTING=round_robin`) ignores adapters and load: the baseline the
benchmark compares with, or a choice when every replica holds every adapter anyway.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence

LOAD_FACTOR = 1.5  # c in the paper: a replica takes at most 50 % more than the average


def rank(adapter: str, replica_key: str) -> bytes:
    return hashlib.sha1(f"{adapter}\0{replica_key}".encode()).digest()


def choose(
    replicas: Sequence[str],
    adapter: str | None,
    outstanding: Mapping[str, int],
    holders: Collection[str] = (),
    exclude: Collection[str] = (),
    load_factor: float = LOAD_FACTOR,
) -> str | None:
    """The replica (key) for one request, or None when every replica is excluded.

    Args:
        replicas: keys of the endpoint's ready replicas.
        adapter: the request's adapter id; None or '' for the base model.
        outstanding: replica key → requests it is serving now (through this gateway).
        holders: replicas that reported holding `adapter`.
        exclude: replicas already tried for this request (they refused the connection).
        load_factor: `c` of the bound.
    """
    candidates = [r for r in replicas if r not in exclude]
    if not candidates:
        return None
    load = {r: outstanding.get(r, 0) for r in candidates}
    order = sorted(candidates, key=lambda r: rank(adapter or "", r), reverse=True)
    if not adapter:
        return min(order, key=lambda r: load[r])  # `min` keeps the first of equals: rank breaks ties
    bound = math.ceil(load_factor * (sum(load.values()) + 1) / len(candidates))
    held = [r for r in order if r in holders and load[r] < bound]
    if held:
        return min(held, key=lambda r: load[r])
    return next(r for r in order if load[r] < bound)


class RoundRobin:
    """The baseline: each request to the next replica, whatever it serves or holds."""

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, replicas: Sequence[str], exclude: Collection[str] = ()) -> str | None:
        candidates = [r for r in replicas if r not in exclude]
        if not candidates:
            return None
        self._turn += 1
        return candidates[self._turn % len(candidates)]
