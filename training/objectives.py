"""Training objectives for flow-map networks, selectable by name from `OBJECTIVES`.

Network interface (every objective relies on it, nothing else):
    ``net(x, t, s, cond) -> u``, the average velocity over the jump t -> s, where t and s are
    float tensors of shape [B] (one time pair per sample) and cond is a tensor or None. How a
    family feeds (t, s) to its layers (`samplers.flow_map.time_inputs`) is the network's business.

Batch: ``{"x0": data (HR), "x1": source (noise, or the LR latent/image), "cond": tensor or absent}``.

Time convention (DESIGN §2): t = 1 source, t = 0 data, ``x_t = (1 - t) x0 + t x1``,
``v = x1 - x0``, flow map ``X(x, t -> s) = x - (t - s) u(x, t, s)``, pseudo-x0 ``x - t u(x, t, 0)``.

Every objective is a dataclass (its fields are its hyper-parameters) called as
``objective(net, batch, ema_net=None, generator=None) -> (loss, logs)``; `logs` maps names to
floats. Only `net` receives gradients: every target is computed under stop-gradient, from
`ema_net` where the objective says so (falling back to `net` when no EMA is given).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..samplers.flow_map import add_source, denoised_from_velocity, jump


def per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [B] time tensor shaped to broadcast against a [B, ...] tensor."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def flow_map(x: torch.Tensor, u: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """X(x, t -> s) from the average velocity u, through the pseudo-x0 of samplers.flow_map."""
    t, s = per_sample(t, x), per_sample(s, x)
    return jump(x, denoised_from_velocity(x, u, t), t, s)


def mean_square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference, shape [B]."""
    return (a - b).float().square().flatten(1).mean(1)


def _unpack(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    missing = [k for k in ("x0", "x1") if k not in batch]
    if missing:
        raise KeyError(f"the batch lacks {missing}: a batch is a dict with 'x0' (data), 'x1' (source) "
                       "and optionally 'cond'")
    x0, x1 = batch["x0"], batch["x1"]
    if x0.shape != x1.shape:
        raise ValueError(f"batch 'x0' {tuple(x0.shape)} and 'x1' {tuple(x1.shape)} must have the same "
                         "shape: bring the source to the data's size before training")
    return x0, x1, batch.get("cond")


def _repeat(cond: torch.Tensor | None, times: int) -> torch.Tensor | None:
    return None if cond is None else torch.cat([cond] * times)


def _uniform(n: int, like: torch.Tensor, generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=like.device, dtype=torch.float32)
    return low + (high - low) * u


def _split(batch_size: int, fraction: float) -> int:
    """How many samples of a batch go to the off-diagonal term (at least one if fraction > 0)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the fraction of the batch must lie in [0, 1], got {fraction}")
    return 0 if fraction == 0 else max(1, round(batch_size * fraction))


@dataclass
class FlowMatching:
    """Flow matching on the diagonal:  L = E_t || u(x_t, t, t) - (x1 - x0) ||^2,  t ~ U(0, 1).

    Trains the instantaneous velocity only; one Euler step from t = 1 lands on E[x0 | x1].
    """

    name = "flow_matching"

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = _unpack(batch)
        t = _uniform(x0.shape[0], x0, generator)
        x_t = add_source(x0, x1, per_sample(t, x0))
        loss = mean_square(net(x_t, t, t, cond), x1 - x0).mean()
        return loss, {"flow": loss.item()}


@dataclass
class Shortcut:
    """Shortcut models (Frans et al.): flow matching plus binary self-consistency.

    A fraction `consistency_fraction` of the batch (Frans et al.: 1/8) trains a jump of size 2d
    against two chained jumps of size d, the rest flow matching on the diagonal (d = 0):

        L_sc = || u(x_t, t, t - 2d) - sg(½ [u'(x_t, t, t - d) + u'(x', t - d, t - 2d)]) ||^2,
        x' = x_t - d u'(x_t, t, t - d),

    with u' the EMA network. 2d = 2^-k, k uniform in {0, ..., levels - 1}, and t a multiple of
    2d in [2d, 1], so every jump lands on the grid an any-step sampler visits. As in the
    original code, the finest level's half jumps use the diagonal velocity u'(x, t, t) (an
    Euler step), which ties the hierarchy to flow matching.

    endpoint_weight > 0 adds FlowSR's HR regularisation on the flow-matching samples,
        L_end = || x_t - t u(x_t, t, 0) - x0 ||^2,
    useful when x1 is a deterministic source (the LR image) so the full jump has one answer.
    """

    consistency_fraction: float = 1 / 8
    levels: int = 7
    endpoint_weight: float = 0.0
    name = "shortcut"

    def __post_init__(self):
        if self.levels < 1:
            raise ValueError(f"levels must be at least 1, got {self.levels}")
        _split(1, self.consistency_fraction)

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = _unpack(batch)
        teacher = net if ema_net is None else ema_net
        n = x0.shape[0]
        n_sc = _split(n, self.consistency_fraction)
        n_fm = n - n_sc

        # Flow-matching part (diagonal) on the first n_fm samples.
        t_fm = _uniform(n_fm, x0, generator)
        x_fm = add_source(x0[:n_fm], x1[:n_fm], per_sample(t_fm, x0))
        v_fm = x1[:n_fm] - x0[:n_fm]

        # Self-consistency part on the last n_sc samples.
        level = torch.randint(0, self.levels, (n_sc,), generator=generator, device=x0.device)
        big = torch.exp2(-level.float())
        grid_points = torch.exp2(level.float())
        t_sc = big * (torch.floor(_uniform(n_sc, x0, generator) * grid_points) + 1)
        half = big / 2
        finest = level == self.levels - 1
        x_sc = add_source(x0[n_fm:], x1[n_fm:], per_sample(t_sc, x0))
        c_sc = None if cond is None else cond[n_fm:]
        with torch.no_grad():
            mid = t_sc - half
            s_first = torch.where(finest, t_sc, mid)
            u_first = teacher(x_sc, t_sc, s_first, c_sc)
            x_mid = flow_map(x_sc, u_first, t_sc, mid)
            u_second = teacher(x_mid, mid, torch.where(finest, mid, t_sc - big), c_sc)
            target_sc = (u_first + u_second) / 2

        # One student call for every term, so a DDP-wrapped net runs one forward per step.
        xs, ts, ss, targets = [x_fm, x_sc], [t_fm, t_sc], [t_fm, t_sc - big], [v_fm, target_sc]
        conds = [None if cond is None else cond[:n_fm], c_sc]
        if self.endpoint_weight > 0:
            xs.append(x_fm), ts.append(t_fm), ss.append(torch.zeros_like(t_fm)), conds.append(conds[0])
        u = net(torch.cat(xs), torch.cat(ts), torch.cat(ss), None if cond is None else torch.cat(conds))
        err = mean_square(u[:n], torch.cat(targets))
        loss_fm, loss_sc = err[:n_fm], err[n_fm:]
        loss = err.mean()
        logs = {"flow": loss_fm.mean().item() if n_fm else 0.0,
                "self_consistency": loss_sc.mean().item() if n_sc else 0.0}
        if self.endpoint_weight > 0:
            x0_hat = denoised_from_velocity(x_fm, u[n:], per_sample(t_fm, x_fm))
            loss_end = mean_square(x0_hat, x0[:n_fm]).mean()
            loss = loss + self.endpoint_weight * loss_end
            logs["endpoint"] = loss_end.item()
        return loss, logs


OBJECTIVES = {cls.name: cls for cls in (FlowMatching, Shortcut)}


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
