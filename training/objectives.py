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


def mean_absolute(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference, shape [B]."""
    return (a - b).float().abs().flatten(1).mean(1)


DISTANCES = {"l2": mean_square, "l1": mean_absolute}


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
    n_map = _split(n, map_fraction)
    a, b = _uniform(n, like, generator), _uniform(n, like, generator)
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
        _split(1, self.map_fraction)

    def _draw(self, batch, generator):
        """(x0, x1, cond, t, s, n_diag, x_t) for one batch."""
        x0, x1, cond = _unpack(batch)
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


@dataclass
class FlowSRConsistency:
    """FlowSR stage 2: consistency distillation along the rectified flow LR -> HR, with HR
    regularisation, between adjacent times t > t' from a fast and a slow scheduler.

    With f(x, t) = x - t u(x, t, 0) (the pseudo-x0 of the full jump) and f' the EMA network's:

        L = || f(x_t, t) - sg(f'(x_t', t')) ||^2
            + hr_weight   (|| f(x_t, t) - x0 ||^2 + || f(x_t', t') - x0 ||^2)
            + flow_weight || u(x_t, t, t) - (x1 - x0) ||^2,
        x_t' = x_t - (t - t') u'(x_t, t, t)   (one Euler step of the EMA network's velocity).

    The flow term keeps the teacher velocity (the diagonal of the same network) trained, so a
    single network is both teacher and one-step student. Times: the scheduler named by
    `student_scheduler` supplies t (fast: k / fast_steps; slow: k / slow_steps), the other one
    t' = its largest point strictly below t. Which side gets which is not published; the
    default "slow" trains the student at every fine time while every target sits on the
    few-step grid, whose points are themselves student times (down to t' = 0, where
    f(x, 0) = x exactly), so the chain of targets is grounded. The HR term regresses onto x0,
    which suits a deterministic source (the LR image); with a noise source set hr_weight = 0,
    or the one-step answer collapses to the data mean.
    """

    fast_steps: int = 4
    slow_steps: int = 1000
    student_scheduler: str = "slow"
    hr_weight: float = 1.0
    flow_weight: float = 1.0
    name = "flowsr_consistency"

    def __post_init__(self):
        if self.student_scheduler not in ("fast", "slow"):
            raise ValueError(f"student_scheduler must be 'fast' or 'slow', got {self.student_scheduler!r}")
        if not 1 <= self.fast_steps <= self.slow_steps:
            raise ValueError(f"need 1 <= fast_steps <= slow_steps, got {self.fast_steps}, {self.slow_steps}")

    def times(self, n: int, like: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Adjacent pairs (t, t'), t' < t, one time from each scheduler."""
        student, other = ((self.slow_steps, self.fast_steps) if self.student_scheduler == "slow"
                          else (self.fast_steps, self.slow_steps))
        t = (torch.floor(_uniform(n, like, generator) * student) + 1) / student
        # The largest grid point of `other` strictly below t (the small offset absorbs rounding).
        t_prev = (torch.ceil(t * other - 1e-4) - 1).clamp(min=0) / other
        return t, t_prev

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = _unpack(batch)
        teacher = net if ema_net is None else ema_net
        n = x0.shape[0]
        t, t_prev = self.times(n, x0, generator)
        x_t = add_source(x0, x1, per_sample(t, x0))
        with torch.no_grad():
            v_teacher = teacher(x_t, t, t, cond)
            x_prev = flow_map(x_t, v_teacher, t, t_prev)
            u_prev = teacher(x_prev, t_prev, torch.zeros_like(t_prev), cond)
            target = denoised_from_velocity(x_prev, u_prev, per_sample(t_prev, x_prev))

        zeros = torch.zeros_like(t)
        xs, ts, ss = [x_t, x_prev], [t, t_prev], [zeros, zeros]
        if self.flow_weight > 0:
            xs.append(x_t), ts.append(t), ss.append(t)
        u = net(torch.cat(xs), torch.cat(ts), torch.cat(ss), _repeat(cond, len(xs)))
        f_t = denoised_from_velocity(x_t, u[:n], per_sample(t, x_t))
        f_prev = denoised_from_velocity(x_prev, u[n:2 * n], per_sample(t_prev, x_prev))
        consistency = mean_square(f_t, target).mean()
        hr = (mean_square(f_t, x0) + mean_square(f_prev, x0)).mean()
        loss = consistency + self.hr_weight * hr
        logs = {"consistency": consistency.item(), "hr": hr.item()}
        if self.flow_weight > 0:
            flow = mean_square(u[2 * n:], x1 - x0).mean()
            loss = loss + self.flow_weight * flow
            logs["flow"] = flow.item()
        return loss, logs


@dataclass
class TrajectoryEndpoint:
    """Every jump regressed onto the data from states on the model's own sampling path, for a
    deterministic source (the upsampled LR image in start mode 'lr').

    For a source that fixes the data, the straight path from any state x_t to x0 has velocity
    (x_t - x0) / t whatever the jump's end s, so every jump t -> s is trained on its endpoint:

        L = d(x_t - t u(x_t, t, s), x0),
        x_t = x1 - (1 - t) sg(u'(x1, 1, t))   (t < 1; at t = 1, x_t = x1),

    with u' the EMA network: x_t is where an any-step sampler stands after its first jump. The
    interpolant (1 - t) x0 + t x1 that flow matching and Shortcut train on carries the data's
    detail scaled by 1 - t, so a network trained there learns to amplify detail that its own
    path never holds (measured on the default model after Shortcut training: 4 steps 0.38 dB
    below 1 step at x4). A fraction `start_fraction` of the batch has t = 1 (the one-step jump), the rest
    t ~ U(0, 1); s ~ U(0, t), so any step count ends on the data. At the optimum the chained
    sampler equals the one-step map: steps trade nothing away, guidance and stochastic
    re-noising are what more steps buy.

    `distance` d is the per-pixel squared error ("l2") or absolute error ("l1"); L1 is the usual
    choice for PSNR-oriented SR networks (EDSR, Lim et al. 2017).
    """

    start_fraction: float = 0.5
    distance: str = "l2"
    name = "trajectory_endpoint"

    def __post_init__(self):
        _split(1, self.start_fraction)
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {self.distance!r}")

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = _unpack(batch)
        teacher = net if ema_net is None else ema_net
        n = x0.shape[0]
        n_path = n - _split(n, self.start_fraction)
        t = torch.cat([_uniform(n_path, x0, generator), torch.ones(n - n_path, device=x0.device)])
        s = t * _uniform(n, x0, generator)
        x_t = x1.clone()
        if n_path:
            with torch.no_grad():
                ones = torch.ones(n_path, device=x0.device)
                path_cond = None if cond is None else cond[:n_path]
                u_first = teacher(x1[:n_path], ones, t[:n_path], path_cond)
                x_t[:n_path] = flow_map(x1[:n_path], u_first, ones, t[:n_path])
        u = net(x_t, t, s, cond)
        err = DISTANCES[self.distance](denoised_from_velocity(x_t, u, per_sample(t, x_t)), x0)
        logs = {"endpoint": err.mean().item(),
                "one_step": err[n_path:].mean().item() if n_path < n else 0.0,
                "path": err[:n_path].mean().item() if n_path else 0.0}
        return err.mean(), logs


OBJECTIVES = {cls.name: cls for cls in (FlowMatching, Shortcut, Lagrangian, Eulerian, MeanFlow,
                                        FlowSRConsistency, TrajectoryEndpoint)}


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
