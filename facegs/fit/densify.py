"""Densification: gsplat's ``DefaultStrategy`` with a cap on the number of Gaussians, and the opacity reset.

gsplat 1.5.3's own reset never fires (``step % reset_every == 0 & step > 0`` parses as a chained
comparison that is always False), so :func:`maybe_reset_opacity` does it explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

from facegs.fit.config import FitConfig
from facegs.splat.scene import Params, num_gaussians


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """``DefaultStrategy`` that never grows beyond ``max_gaussians``.

    When more Gaussians qualify for growth than the budget allows, only those with the largest
    accumulated image-plane gradient grow (the others' accumulators are zeroed before the parent's
    ``_grow_gs``; all accumulators are zeroed after every refinement anyway).
    """

    max_gaussians: int = 30_000

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state, step):
        budget = self.max_gaussians - num_gaussians(params)
        grads = state["grad2d"] / state["count"].clamp_min(1)
        cand = grads > self.grow_grad2d
        if int(cand.sum()) > max(budget, 0):
            keep = torch.zeros_like(cand)
            if budget > 0:
                keep[torch.topk(torch.where(cand, grads, torch.zeros_like(grads)), budget).indices] = True
            state["grad2d"][~keep] = 0.0
        return super()._grow_gs(params, optimizers, state, step)


def make_strategy(cfg: FitConfig) -> CappedDefaultStrategy:
    """Densification policy for a resolved config. gsplat 1.5.3's own opacity reset never fires;
    :func:`maybe_reset_opacity` does it (a clamp, so harmless if a later gsplat resets as well)."""
    return CappedDefaultStrategy(
        prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
        refine_every=cfg.refine_every, reset_every=cfg.reset_every, max_gaussians=cfg.max_gaussians,
    )  # fmt: skip


def maybe_reset_opacity(params: Params, optimizers: dict, strategy_state: dict, step: int, cfg: FitConfig) -> bool:
    """3DGS opacity reset: at ``step % reset_every == 0`` (0 < step < refine_stop) clamp every
    opacity to ``2 * prune_opa`` and zero its Adam moments. Returns whether it fired."""
    if not (cfg.densify and 0 < step < cfg.refine_stop and step % cfg.reset_every == 0):
        return False
    reset_opa(params=params, optimizers=optimizers, state=strategy_state, value=cfg.prune_opa * 2.0)
    return True
