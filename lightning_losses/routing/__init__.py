"""Per-key optimizers: ``{"seg": Adam, "depth": SGD, "loss": AdamW}`` inside automatic optimization.

Lightning only allows several optimizers through manual optimization, which refuses gradient
clipping and accumulation and counts every optimizer's step in ``global_step``. Instead, the route
optimizers are presented to Lightning as one :class:`RoutedOptimizer` (``step``, ``zero_grad``,
``state_dict`` and ``param_groups`` delegate to them), and the one backward Lightning runs is made
to leave each parameter holding the gradient of *its own route's* weighted loss:

* When every route's parameters are reached only by that route's terms (heads per task, a shared
  trunk on ``"loss"``), the plain backward of the total already does that: the fast path. Whether
  it holds is decided exactly, from the autograd graph, once per key set.
* Otherwise each route's gradient is computed with ``torch.autograd.grad`` and the step returns a
  surrogate ``sum_p <p, g_p>`` whose backward writes exactly ``g_p`` into ``p.grad``. That backward
  is the only one DDP sees (``autograd.grad`` does not fire its hooks), so gradients are
  synchronised once per step, and clipping, accumulation and AMP scaling apply to it unchanged.

Alternating optimizers (GANs) live here too. A route's dict may carry
``"frequency": n`` (routes take turns, ``n`` consecutive optimizer steps each, in the order given)
and its own ``"gradient_clip_val"``/``"gradient_clip_algorithm"``. The turn is a function of
``trainer.global_step`` alone (the number of optimizer steps so far), so it needs no state of its
own: a turn spans whole accumulated steps, and a resumed run continues mid-cycle exactly. Only the
active routes' optimizers step, only their schedulers follow, and the other routes' parameters
get zero gradients (so DDP, without ``find_unused_parameters``, hears from every parameter).
``route_mode="sequential"`` runs Lightning's closure once per active route inside the one
``optimizer.step(closure)`` Lightning calls (the mechanism LBFGS uses): each pass re-runs
``training_step``, so each route's ``forward`` sees the previous routes' update, and clipping and
``on_before_optimizer_step`` apply per pass.

The package: ``route`` (a route's name, the shared vocabulary), ``config`` (what a route map
says, checked and turned into one Lightning optimizer config), ``optimizer`` (the
``RoutedOptimizer`` with the torch optimizer contract, its stepping), ``groups`` (which route a
parameter group belongs to), ``views`` (its per-parameter state and per-route views, what
``LearningRateMonitor`` reads), ``state_dict`` (its state dict's shape, split per route on
load), ``schedulers`` (a route's scheduler follows its own route's steps), ``compiling`` (the
forward's context under ``torch.compile``), ``router`` (which backward gives each parameter its
route's gradient, also under ``torch.compile`` and FSDP2) and ``session`` (one fit's routing
state). Imports run one way: route <- groups, views, state_dict, compiling <- optimizer <-
schedulers <- config; optimizer <- router <- session.
"""

from lightning_losses.graph import reached_parameters
from lightning_losses.routing.config import (
    ROUTE_KEYS,
    RouteConfig,
    RouteMap,
    check_ownership,
    is_route_map,
    parse_route_map,
)
from lightning_losses.routing.optimizer import RoutedOptimizer, routed_optimizer
from lightning_losses.routing.route import EVERY_ROUTE, Route, route_name
from lightning_losses.routing.router import Router

__all__ = [
    "EVERY_ROUTE",
    "ROUTE_KEYS",
    "Route",
    "RouteConfig",
    "RouteMap",
    "RoutedOptimizer",
    "Router",
    "check_ownership",
    "is_route_map",
    "parse_route_map",
    "reached_parameters",
    "route_name",
    "routed_optimizer",
]
