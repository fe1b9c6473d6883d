"""A route's name and the sentinel for "every route": the vocabulary every part of routing shares.

Kept apart from :mod:`config` so that the optimizer and the router can name routes without
importing the route-map parser that builds them.
"""

from __future__ import annotations

Route = tuple[str, ...]  # the terms of a route; ("loss",) is the weighted total


class _EveryRoute(frozenset):
    """``active_routes`` before the routes are known (evaluation before any fit): every route
    counts, so ``name in active_routes`` holds for every name."""

    def __contains__(self, name: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "EVERY_ROUTE"


EVERY_ROUTE: frozenset[str] = _EveryRoute()


def route_name(route: Route) -> str:
    """How a route is named in checkpoints, logs and messages: ``"seg"``, ``"g+adv"``."""
    return route[0] if len(route) == 1 else "+".join(route)
