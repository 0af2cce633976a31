"""Pure route selection: priority tiers, weighted random inside a tier, cooldown skips.

No I/O, no Django: a function of the routes, a random source and a predicate saying
whether a physical model is cooling down. The gateway asks for the next route lazily,
so a breaker that opens during this call is seen by the next pick.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

from routing.snapshot import RouteSnap


def tiers(routes: Iterable[RouteSnap]) -> list[list[RouteSnap]]:
    """Routes grouped by priority, lowest number first. Weight-0 routes never serve."""
    by_priority: dict[int, list[RouteSnap]] = {}
    for route in routes:
        if route.weight > 0:
            by_priority.setdefault(route.priority, []).append(route)
    return [by_priority[p] for p in sorted(by_priority)]


def weighted_pick(candidates: list[RouteSnap], rng: random.Random | None = None) -> RouteSnap:
    if len(candidates) == 1:
        return candidates[0]
    total = sum(r.weight for r in candidates)
    point = (rng or random).random() * total
    for route in candidates:
        point -= route.weight
        if point < 0:
            return route
    return candidates[-1]  # float rounding at the very top of the range


def plan(
    routes: Iterable[RouteSnap],
    is_open: Callable[[int], bool],
    *,
    allowed_route_ids: frozenset[int] | None = None,
    rng: random.Random | None = None,
) -> Iterator[RouteSnap]:
    """Yield routes in the order to try them: each tier's healthy routes by weighted
    random draw without replacement, then the next tier. Never the same route twice."""
    for tier in tiers(r for r in routes if allowed_route_ids is None or r.id in allowed_route_ids):
        remaining = list(tier)
        while remaining:
            healthy = [r for r in remaining if not is_open(r.physical_model.id)]
            if not healthy:
                break
            route = weighted_pick(healthy, rng)
            remaining.remove(route)
            yield route
