"""Flow-map objectives (see training/objectives.py for the contract): flow matching on the diagonal,
Shortcut self-consistency, Lagrangian and Eulerian self-distillation, the MeanFlow identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..samplers.flow_map import add_source, denoised_from_velocity, flow_map, per_sample
from .losses import batch_split, mean_square, uniform_times, unpack_batch


@dataclass
class FlowMatching:
    """Flow matching on the diagonal:  L = E_t || u(x_t, t, t) - (x1 - x0) ||^2,  t ~ U(0, 1).

    Trains the instantaneous velocity only; one Euler step from t = 1 lands on E[x0 | x1].
    """

    name = "flow_matching"

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = unpack_batch(batch)
        t = uniform_times(x0.shape[0], x0, generator)
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

    endpoint_weight > 0 adds FlowSR's HR regularisation on every sample's point,
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
        batch_split(1, self.consistency_fraction)

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = unpack_batch(batch)
        teacher = net if ema_net is None else ema_net
        n = x0.shape[0]
        n_sc = batch_split(n, self.consistency_fraction)
        n_fm = n - n_sc

        # Flow-matching part (diagonal) on the first n_fm samples.
        t_fm = uniform_times(n_fm, x0, generator)
        x_fm = add_source(x0[:n_fm], x1[:n_fm], per_sample(t_fm, x0))
        v_fm = x1[:n_fm] - x0[:n_fm]

        # Self-consistency part on the last n_sc samples.
        level = torch.randint(0, self.levels, (n_sc,), generator=generator, device=x0.device)
        big = torch.exp2(-level.float())
        grid_points = torch.exp2(level.float())
        t_sc = big * (torch.floor(uniform_times(n_sc, x0, generator) * grid_points) + 1)
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
        if self.endpoint_weight > 0:  # the full jump t -> 0 from every sample's point
            xs, ts, ss, conds = xs * 2, ts * 2, ss + [torch.zeros(n, device=x0.device)], conds * 2
        u = net(torch.cat(xs), torch.cat(ts), torch.cat(ss), None if cond is None else torch.cat(conds))
        err = mean_square(u[:n], torch.cat(targets))
        loss_fm, loss_sc = err[:n_fm], err[n_fm:]
        loss = err.mean()
        logs = {"flow": loss_fm.mean().item() if n_fm else 0.0,
                "self_consistency": loss_sc.mean().item() if n_sc else 0.0}
        if self.endpoint_weight > 0:
            x_all, t_all = torch.cat(xs[:2]), torch.cat(ts[:2])
            loss_end = mean_square(denoised_from_velocity(x_all, u[n:], per_sample(t_all, x_all)), x0).mean()
            loss = loss + self.endpoint_weight * loss_end
            logs["endpoint"] = loss_end.item()
        return loss, logs


def _time_pairs(n: int, like: torch.Tensor, generator, map_fraction: float):
    """(t, s, n_diag): the first n_diag pairs lie on the diagonal s = t, the rest have s < t,
    drawn as the sorted pair of two uniform times (uniform on the triangle 0 <= s <= t <= 1)."""
    n_map = batch_split(n, map_fraction)
    a, b = uniform_times(n, like, generator), uniform_times(n, like, generator)
    t, s = torch.maximum(a, b), torch.minimum(a, b)
    n_diag = n - n_map
    s = torch.cat([t[:n_diag], s[n_diag:]])
    return t, s, n_diag


def _split_logs(err: torch.Tensor, n_diag: int, map_name: str) -> tuple[torch.Tensor, dict]:
    """Mean loss over the batch, with its diagonal (flow) and off-diagonal parts logged apart."""
    logs = {"flow": err[:n_diag].mean().item() if n_diag else 0.0,
            map_name: err[n_diag:].mean().item() if n_diag < err.shape[0] else 0.0}
    return err.mean(), logs


@dataclass
class _TimePairObjective:
    """Shared by the objectives trained on pairs (t, s): a fraction `map_fraction` of the batch
    has s < t, the rest lies on the diagonal and trains flow matching."""

    map_fraction: float = 0.25

    def __post_init__(self):
        batch_split(1, self.map_fraction)

    def _draw(self, batch, generator):
        """(x0, x1, cond, t, s, n_diag, x_t) for one batch."""
        x0, x1, cond = unpack_batch(batch)
        t, s, n_diag = _time_pairs(x0.shape[0], x0, generator, self.map_fraction)
        return x0, x1, cond, t, s, n_diag, add_source(x0, x1, per_sample(t, x0))


@dataclass
class Lagrangian(_TimePairObjective):
    """Lagrangian self-distillation (Boffi et al.): the map's s-derivative follows the flow.

        L_map  = || d/ds X(x_t, t -> s) - sg(v(X(x_t, t -> s), s)) ||^2,   v(x, s) = u(x, s, s),
        L_flow = || u(x_t, t, t) - (x1 - x0) ||^2 on the diagonal,

    with d/ds by one forward-mode JVP (torch.func.jvp) and v from the same network under
    stop-gradient. A fraction `map_fraction` of the batch has s < t (the sorted pair of two
    uniform times), the rest trains the diagonal.
    """

    name = "lagrangian"

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond, t, s, n_diag, x_t = self._draw(batch, generator)

        def map_of_s(s_):
            u = net(x_t, t, s_, cond)
            return flow_map(x_t, u, t, s_), u

        (x_s, u), (dx_ds, _) = torch.func.jvp(map_of_s, (s,), (torch.ones_like(s),))
        with torch.no_grad():
            c = None if cond is None else cond[n_diag:]
            v_end = net(x_s[n_diag:].detach(), s[n_diag:], s[n_diag:], c)
        err = torch.cat([mean_square(u[:n_diag], (x1 - x0)[:n_diag]), mean_square(dx_ds[n_diag:], v_end)])
        return _split_logs(err, n_diag, "lagrangian")


@dataclass
class Eulerian(_TimePairObjective):
    """Eulerian self-distillation (Boffi et al.): the map is transported by the flow.

        L_map  = || d/dt X(x_t, t -> s) + sg(grad_x X(x_t, t -> s) . v(x_t, t)) ||^2,
        L_flow = || u(x_t, t, t) - (x1 - x0) ||^2 on the diagonal,

    v(x, t) = u(x, t, t) from the same network; d/dt and the directional derivative along v are
    two JVPs, the second under stop-gradient (the spatial term is known to be less stable, so
    only the time derivative carries the gradient). Time pairs as in `Lagrangian`.
    """

    name = "eulerian"

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond, t, s, n_diag, x_t = self._draw(batch, generator)
        m = slice(n_diag, None)
        c = None if cond is None else cond[m]
        with torch.no_grad():
            v = net(x_t[m], t[m], t[m], c)
            _, transport = torch.func.jvp(lambda x: flow_map(x, net(x, t[m], s[m], c), t[m], s[m]),
                                          (x_t[m],), (v,))

        def map_of_t(t_):
            u = net(x_t, t_, s, cond)
            return flow_map(x_t, u, t_, s), u

        (_, u), (dx_dt, _) = torch.func.jvp(map_of_t, (t,), (torch.ones_like(t),))
        err = torch.cat([mean_square(u[:n_diag], (x1 - x0)[:n_diag]),
                         mean_square(dx_dt[m], -transport)])
        return _split_logs(err, n_diag, "eulerian")


@dataclass
class MeanFlow(_TimePairObjective):
    """MeanFlow identity (Geng et al.): the average velocity satisfies u = v - (t - s) du/dt.

        L = || u(x_t, t, s) - sg(v - (t - s) (v . grad_x u + d_t u)) ||^2,

    with du/dt the total derivative along the flow, one JVP of u in (x, t, s) with tangent
    (v, 1, 0). `velocity` chooses v: "conditional" (x1 - x0, as in the paper; the loss then
    keeps the conditional variance at its minimum) or "model" (sg(u(x_t, t, t)), the network's
    own marginal velocity; the residual of an exact map is then zero, but training from scratch
    with it is unstable, since nothing anchors the velocity). On the diagonal s = t (a fraction
    1 - map_fraction of the batch; the paper uses 75%) the loss is flow matching.
    adaptive_power p > 0 reweights each sample by sg(1 / (err + 1e-3)^p) (the paper's p = 1,
    the default; on the 2-D toy it more than halves the one-step error of a short run);
    0 keeps plain L2.
    """

    velocity: str = "conditional"
    adaptive_power: float = 1.0
    name = "meanflow"

    def __post_init__(self):
        super().__post_init__()
        if self.velocity not in ("conditional", "model"):
            raise ValueError(f"velocity must be 'conditional' or 'model', got {self.velocity!r}")
        if self.adaptive_power < 0:
            raise ValueError(f"adaptive_power must be >= 0, got {self.adaptive_power}")

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond, t, s, n_diag, x_t = self._draw(batch, generator)
        if self.velocity == "conditional":
            v = x1 - x0
        else:
            with torch.no_grad():
                v = net(x_t, t, t, cond)
        u, du_dt = torch.func.jvp(lambda x, t_, s_: net(x, t_, s_, cond), (x_t, t, s),
                                  (v, torch.ones_like(t), torch.zeros_like(s)))
        target = (v - per_sample(t - s, x_t) * du_dt).detach()
        err = mean_square(u, target)
        loss, logs = _split_logs(err, n_diag, "meanflow")
        if self.adaptive_power > 0:
            loss = (err / (err.detach() + 1e-3) ** self.adaptive_power).mean()
        return loss, logs
