"""Training objectives for flow-map networks, selectable by name from `OBJECTIVES`.

Network interface (every objective relies on it, nothing else):
    ``net(x, t, s, cond) -> u``, the average velocity over the jump t -> s, where t and s are
    float tensors of shape [B] (one time pair per sample) and cond is a tensor or None. How a
    family feeds (t, s) to its layers (`samplers.flow_map.time_inputs`) is the network's business.

Batch: ``{"x0": data (HR), "x1": source (noise, or the LR latent/image), "cond": tensor or absent}``.

Time convention (samplers/flow_map.py): t = 1 source, t = 0 data, ``x_t = (1 - t) x0 + t x1``,
``v = x1 - x0``, flow map ``X(x, t -> s) = x - (t - s) u(x, t, s)``, pseudo-x0 ``x - t u(x, t, 0)``.

Every objective is a dataclass (its fields are its hyper-parameters) called as
``objective(net, batch, ema_net=None, generator=None) -> (loss, logs)``; `logs` maps names to
floats. Only `net` receives gradients: every target is computed under stop-gradient, from
`ema_net` where the objective says so (falling back to `net` when no EMA is given).
"""

from __future__ import annotations

import dataclasses

from .flow_map_objectives import Eulerian, FlowMatching, Lagrangian, MeanFlow, Shortcut
from .ftd_objectives import FlowTrajectoryDistillation
from .realism_objectives import PerceptualEndpoint, SelfAdversarial, TEASRAnyStep, TimestepRectification, TVLPIPS
from .sr_objectives import FlowSRConsistency, TrajectoryEndpoint

OBJECTIVES = {cls.name: cls for cls in (FlowMatching, Shortcut, Lagrangian, Eulerian, MeanFlow,
                                        FlowSRConsistency, TrajectoryEndpoint, PerceptualEndpoint, TVLPIPS,
                                        TimestepRectification, SelfAdversarial, TEASRAnyStep,
                                        FlowTrajectoryDistillation)}


def make_objective(name: str, **options):
    """The objective `name` of OBJECTIVES with its hyper-parameters set from `options`."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    cls = OBJECTIVES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"objective {name!r} has no option(s) {unknown}; it takes {sorted(fields)}")
    return cls(**options)


def objective_options(objective) -> dict:
    """The hyper-parameters of an objective, JSON-ready (for checkpoint metadata)."""
    return dataclasses.asdict(objective)
