"""Steps that use curvature: Gauss–Newton (Levenberg–Marquardt) from the reweighting Jacobian.

The target loss is a weighted sum of squares, L_T = Σ_m r_m² with, for target t and bin m,

    r_m = s_m (⟨O_m⟩_θ − Õ_m) / σ_m,      s_m = √(λ_t / n_t)      (n_t: the target's bins),

which is :func:`difftre_torch.loss.observable_loss` weighted as in
:func:`difftre_torch.objective.make_loss_fn`. The reweighting gives every average's Jacobian
(inverse Monte Carlo: Lyubartsev & Laaksonen, Phys. Rev. E 52, 3730 (1995)):

    ∂⟨O⟩/∂θ = ⟨∂O/∂θ⟩ − β [⟨O ∂U/∂θ⟩ − ⟨O⟩⟨∂U/∂θ⟩]                    (weights w_i(θ)),

from the per-snapshot gradients ∂U_i/∂θ and ∂O_i/∂θ (:func:`snapshot_jacobians`). With J = ∂r/∂θ
[M, P], the gradient is g_T = 2 Jᵀ r (equal to the DiffTRe gradient; tested) and the
Gauss–Newton matrix H_T = 2 JᵀJ. Force matching adds λ·L_FM with its exact Hessian
(:func:`difftre_torch.force_matching.force_matching_gradient` with ``curvature=True``).

A Levenberg–Marquardt step solves (H + μ·diag H) δ = −g (:func:`damped_step`); the trainer accepts
it when the pool still covers θ + δ (N_eff/N above a bound, a trust region in what the samples
cover) and the reweighted loss falls by at least a quarter of the predicted
−(gᵀδ + ½ δᵀHδ), else raises μ and tries again (:class:`LevenbergMarquardt`).

Parameters are handled as one flat vector of P entries, in the order of ``params``. Units: θ in
its own units, U in eV, k_B T in eV; r dimensionless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from difftre_torch.experiment.target import Target
from difftre_torch.gradient import ChunkFn
from difftre_torch.pair_reuse import DEFAULT_LIMIT_MB, chunk_calls, store_pairs
from difftre_torch.sampling.store import SnapshotStore

if TYPE_CHECKING:
    from difftre_torch.distributed import Ranks


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One float64 CPU vector of ``tensors`` (parameters or their gradients), [P]."""
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])


def unflat(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``vector`` [P] split and shaped like ``like`` (device and dtype of each)."""
    out, k = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[k:k + n].reshape(t.shape).to(t))
        k += n
    return out


def _row_gradients(outputs: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """∂outputs_i/∂θ for every entry of ``outputs`` [R] → [R, P] (one batched backward, or one
    backward per entry where the model's operators do not batch)."""
    n = outputs.shape[0]
    try:
        eye = torch.eye(n, dtype=outputs.dtype, device=outputs.device)
        rows = torch.autograd.grad(outputs, params, grad_outputs=eye, retain_graph=True,
                                   allow_unused=True, is_grads_batched=True)
        return torch.cat([torch.zeros(n, p.numel(), dtype=torch.float64) if g is None
                          else g.reshape(n, -1).double().cpu() for g, p in zip(rows, params)], dim=1)
    except RuntimeError:
        out = []
        for i in range(n):
            row = torch.autograd.grad(outputs[i], params, retain_graph=True, allow_unused=True)
            out.append(torch.cat([torch.zeros(p.numel(), dtype=torch.float64) if g is None
                                  else g.reshape(-1).double().cpu() for g, p in zip(row, params)]))
        return torch.stack(out)


def snapshot_jacobians(potential, store: SnapshotStore, chunk_fn: ChunkFn, params: Sequence[torch.Tensor],
                       chunk_size: int, pair_cache_mb: float = DEFAULT_LIMIT_MB) -> dict[str, torch.Tensor]:
    """Per-snapshot ∂/∂θ of everything ``chunk_fn`` returns: ``"energy"`` → [S, P] (eV per unit
    θ) and each θ-dependent observable → [S, m, P], float64 on the CPU. Memory O(S·m·P): for
    models with few parameters."""
    params = list(params)
    parts: dict[str, list[torch.Tensor]] = {}
    cache = store_pairs(potential, store, pair_cache_mb)
    for sl, call in chunk_calls(potential, len(store), chunk_size, cache, store.positions.dtype):
        with torch.enable_grad():
            out = chunk_fn(call, store.positions[sl], store.cells[sl], store.numbers, store, True)
            for key, value in out.items():
                b = value.shape[0]
                rows = _row_gradients(value.reshape(-1), params)        # [b·m, P]
                parts.setdefault(key, []).append(rows.reshape(b, -1, rows.shape[-1]))
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["energy"] = out["energy"][:, 0, :]
    return out


@dataclass
class Residuals:
    """The target loss as a sum of squares: r [M], the Jacobian J = ∂r/∂θ [M, P] (float64, CPU),
    and which rows belong to which target (name → slice). L_T = Σ r², g_T = 2Jᵀr, H_T = 2JᵀJ."""

    r: torch.Tensor
    J: torch.Tensor
    rows: dict[str, slice]

    @property
    def loss(self) -> float:
        return float((self.r * self.r).sum())

    def gradient(self) -> torch.Tensor:
        return 2.0 * self.J.T @ self.r

    def gauss_newton(self) -> torch.Tensor:
        return 2.0 * self.J.T @ self.J


def residual_scale(target: Target, n: int) -> torch.Tensor:
    """s_m / σ_m for a target of ``n`` bins: √(λ_t / n) / σ (σ = 1 without uncertainties), [n]."""
    scale = torch.full((n,), (target.weight / n) ** 0.5, dtype=torch.float64)
    if target.sigma is not None:
        scale = scale / target.sigma.reshape(-1).double()
    return scale


def target_residuals(grouped: dict[str, list[Target]], point_names: Sequence[str],
                     weights: Sequence[torch.Tensor], values: Sequence[dict[str, torch.Tensor]],
                     jacobians: Sequence[dict[str, torch.Tensor]], kTs: Sequence[float],
                     ranks: Ranks | None = None) -> Residuals:
    """r and J of every target (module docstring) from the weights [S_k] and per-snapshot values
    [S_k, ...] of each state point and their :func:`snapshot_jacobians`; with several ``ranks``
    the sums over snapshots are all-reduced (this rank's snapshots in, the global r and J out)."""
    active = ranks is not None and ranks.active
    rs, Js, rows, start = [], [], {}, 0
    for k, point in enumerate(point_names):
        w = weights[k].detach().double().cpu()
        dU = jacobians[k]["energy"]                                              # [S, P]
        for t in grouped.get(point, []):
            O = values[k][t.name].detach().double().cpu().reshape(w.shape[0], -1)  # [S, m]
            m = O.shape[1]
            parts = [w @ O, torch.einsum("s,sm,sp->mp", w, O, dU), w @ dU]
            dO = jacobians[k].get(t.name)
            if dO is not None:
                parts.append(torch.einsum("s,smp->mp", w, dO))
            if active:
                parts = ranks.sum_list(parts, "the Jacobian of the averages")
            mean, cross, mean_dU = parts[0], parts[1], parts[2]
            jac = -(cross - mean[:, None] * mean_dU[None, :]) / kTs[k]
            if dO is not None:
                jac = jac + parts[3]
            scale = residual_scale(t, m)
            rs.append(scale * (mean - t.values.reshape(-1).double()))
            Js.append(scale[:, None] * jac)
            rows[t.name] = slice(start, start + m)
            start += m
    return Residuals(r=torch.cat(rs), J=torch.cat(Js), rows=rows)


def damped_step(gradient: torch.Tensor, hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """δ solving (H + μ·diag H) δ = −g (Marquardt's scaling, so θ's units do not matter), [P].

    A zero diagonal entry (a parameter the loss does not see) is given the largest one's 1e-12,
    so the step leaves it where it is."""
    diag = torch.diagonal(hessian).clamp_min(0.0)
    floor = 1e-12 * float(diag.max()) if float(diag.max()) > 0 else 1e-12
    a = hessian + damping * torch.diag(diag.clamp_min(floor)) + floor * torch.eye(hessian.shape[0],
                                                                                    dtype=hessian.dtype)
    return -torch.linalg.solve(a, gradient)


def predicted_change(gradient: torch.Tensor, hessian: torch.Tensor, step: torch.Tensor) -> float:
    """The quadratic model's loss change gᵀδ + ½ δᵀHδ (negative: a decrease)."""
    return float(gradient @ step + 0.5 * step @ hessian @ step)


def model_gain(gradient: torch.Tensor, hessian: torch.Tensor) -> float:
    """½ gᵀH⁺g: the loss decrease to the minimum of the undamped quadratic model (≥ 0 for H ⪰ 0)."""
    return float(0.5 * gradient @ torch.linalg.pinv(hessian) @ gradient)


@dataclass
class Trial:
    """The loss and the smallest N_eff/N (over state points) at a trial θ."""

    loss: float
    n_eff_ratio: float


@dataclass
class StepReport:
    """What a Levenberg–Marquardt update did: the step taken (δ, flat [P]; zero if none was
    accepted), the damping it was taken with, the tries, the predicted and the realised
    (reweighted) loss change, the N_eff/N at θ + δ, and the gain: the decrease the undamped
    Gauss–Newton model promises, ½ gᵀH⁺g (what is left to win; the stopping rule's measure)."""

    step: torch.Tensor
    damping: float
    tries: int
    predicted: float
    realised: float
    n_eff_ratio: float
    accepted: bool
    gain: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"norm": float(self.step.norm()), "damping": self.damping,
                "tries": self.tries, "predicted": self.predicted, "realised": self.realised,
                "n_eff_ratio_after": self.n_eff_ratio, "accepted": float(self.accepted), "gain": self.gain}


class LevenbergMarquardt:
    """Damped Gauss–Newton steps with a trust region in N_eff (module docstring).

    damping: μ, kept between updates (÷3 after an accepted step; raised after a rejected try,
    :meth:`propose`).
    min_n_eff_ratio: a trial θ whose N_eff/N (N: one trajectory's snapshots) falls below it is
    outside what the samples cover and is rejected. max_tries: tries per update.
    """

    def __init__(self, damping: float = 1e-3, min_n_eff_ratio: float = 0.1, max_tries: int = 12,
                 min_damping: float = 1e-9, max_damping: float = 1e9) -> None:
        self.damping, self.min_n_eff_ratio, self.max_tries = damping, min_n_eff_ratio, max_tries
        self.min_damping, self.max_damping = min_damping, max_damping

    def propose(self, loss: float, gradient: torch.Tensor, hessian: torch.Tensor,
                trial: Callable[[torch.Tensor], Trial]) -> StepReport:
        """Find an accepted step from θ (loss ``loss``, gradient [P], Hessian [P, P]); ``trial(δ)``
        evaluates the reweighted loss at θ + δ and restores θ.

        A try that leaves the trust region (N_eff/N = r below ``min_n_eff_ratio``) raises μ,
        without further trials, until the step is short enough to stay inside if N_eff/N falls as
        exp(−c|δ|²): |δ| ≤ 0.8 |δ_try| √(ln r_min / ln r); a try whose loss falls less than a
        quarter of the prediction raises μ fourfold."""
        gain = model_gain(gradient, hessian)
        damping = self.damping
        for tries in range(1, self.max_tries + 1):
            step = damped_step(gradient, hessian, damping)
            predicted = predicted_change(gradient, hessian, step)
            if not predicted < 0:  # no descent left in the model: a zero step
                self.damping = damping
                return StepReport(torch.zeros_like(step), damping, tries, 0.0, 0.0, 1.0, False, gain)
            result = trial(step)
            realised = result.loss - loss
            if result.n_eff_ratio >= self.min_n_eff_ratio and realised <= 0.25 * predicted:
                self.damping = max(self.min_damping, damping / 3.0)
                return StepReport(step, damping, tries, predicted, realised, result.n_eff_ratio, True, gain)
            if result.n_eff_ratio < self.min_n_eff_ratio:
                ratio = min(max(result.n_eff_ratio, 1e-12), 0.999)
                goal = 0.8 * float(step.norm()) * math.sqrt(math.log(self.min_n_eff_ratio) / math.log(ratio))
                damping *= 2.0
                while damping < self.max_damping and float(damped_step(gradient, hessian, damping).norm()) > goal:
                    damping *= 2.0
            else:
                damping *= 4.0
            damping = min(self.max_damping, damping)
        self.damping = damping
        return StepReport(torch.zeros_like(gradient), damping, self.max_tries, predicted, realised,
                          result.n_eff_ratio, False, gain)

    def state_dict(self) -> dict:
        return {"damping": self.damping}

    def load_state_dict(self, state: dict) -> None:
        self.damping = float(state["damping"])


def residual_vector(grouped: dict[str, list[Target]], point_names: Sequence[str],
                    weights: Sequence[torch.Tensor], values: Sequence[dict[str, torch.Tensor]],
                    ranks: Ranks | None = None) -> torch.Tensor:
    """r [M] alone (no Jacobian), in the row order of :func:`target_residuals`."""
    from difftre_torch.reweighting import reweighted_mean

    out = []
    for k, point in enumerate(point_names):
        for t in grouped.get(point, []):
            mean = reweighted_mean(weights[k], values[k][t.name], ranks).detach().double().cpu().reshape(-1)
            out.append(residual_scale(t, mean.numel()) * (mean - t.values.reshape(-1).double()))
    return torch.cat(out)


def parameter_errors(residuals: Residuals, hessian: torch.Tensor, replicates: torch.Tensor,
                     grouped: dict[str, list[Target]], point_names: Sequence[str]) -> torch.Tensor:
    """Standard errors of θ̂ (the minimiser of the loss) [P], from the linear response
    δθ = −H⁻¹ δg with δg = 2Jᵀ δr:

    * the samples' noise: the jackknife of δθ_(b) = −H⁻¹ 2Jᵀ r_(b) over the residual replicates
      ``replicates`` [B, M] (:func:`~difftre_torch.convergence.jackknife_replicates` of
      :func:`residual_vector`);
    * the targets' noise, for targets with σ (their standard error): Cov = H⁻¹ (2J)ᵀ diag(s²) (2J) H⁻¹
      with s_m = √(λ_t/n_t) the residuals' scale (Var r_m = s_m²).

    hessian [P, P]: the Hessian of the whole loss (Gauss–Newton of the targets plus force matching)."""
    from difftre_torch.convergence import jackknife_error

    J = residuals.J
    h_inv = torch.linalg.pinv(hessian)
    shifts = -(replicates @ (2.0 * J)) @ h_inv.T if replicates.shape[0] else torch.zeros(0, J.shape[1])
    variance = jackknife_error(shifts) ** 2 if shifts.shape[0] else torch.zeros(J.shape[1], dtype=torch.float64)
    s2 = torch.zeros(J.shape[0], dtype=torch.float64)
    for point in point_names:
        for t in grouped.get(point, []):
            if t.sigma is not None:
                rows = residuals.rows[t.name]
                s2[rows] = t.weight / (rows.stop - rows.start)
    if bool((s2 > 0).any()):
        a = h_inv @ (2.0 * J).T
        variance = variance + torch.diagonal(a @ torch.diag(s2) @ a.T)
    return torch.sqrt(variance)
