"""Losses for training and fine-tuning face parsers: OHEM cross-entropy and structure via consensus.

Shapes: ``B`` images, ``C`` classes, ``H x W`` pixels. ``target`` values are class indices in
``[0, C)`` or ``ignore_index`` (255); any other value is treated as ignored as well.

- :func:`ohem_cross_entropy`: the BiSeNet / face-parsing.PyTorch recipe (online hard example mining).
- :func:`consensus_loss`: structure via consensus (Masi, Mathai, AbdAlmageed, CVPR 2020), which treats
  every connected component ("blob") of a target class as one object.
- :func:`total_parser_loss`: OHEM on the three BiSeNet heads plus the optional consensus term.

Everything runs on the logits' device (CPU or CUDA) and is vectorised; only the connected components
of the target are computed on the CPU (OpenCV), looping over (image, class) pairs, never over blobs
or pixels. Data loaders may precompute them with :func:`blob_ids` and pass ``blobs=`` in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from facegs.core.labels import IGNORE_INDEX

_EPS = 1e-12


def _valid_mask(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    return (target != ignore_index) & (target >= 0) & (target < num_classes)


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Online-hard-example-mined cross-entropy (BiSeNet recipe). Returns a scalar.

    ``logits`` [B, C, H, W]; ``target`` [B, H, W] long; ``weight`` optional [B, H, W] per-pixel
    weights (for example label confidence).

    A valid pixel (not ``ignore_index``, weight > 0) is *hard* when the predicted probability of its
    true class is below ``thresh`` (its CE exceeds ``-log(thresh)``). The loss is averaged over the
    hard pixels, but at least the ``min_kept`` highest-CE valid pixels are always kept (default
    ``B * H * W // 16``, the reference's ``n_min``; capped at the number of valid pixels). This is
    the reference's rule "if the ``min_kept``-th largest loss exceeds the threshold keep everything
    above the threshold, else keep the top ``min_kept``", except that ignored pixels never count.
    ``thresh >= 1`` keeps every valid pixel, i.e. plain cross-entropy.

    Weights do not change which pixels are hard. The result is ``sum(w * ce) / n_kept`` over kept
    pixels, so uniformly lower weights scale the loss down (the mean of ``w * ce``). Pixels with
    weight <= 0 are treated as ignored. With no valid pixel the result is a zero that keeps the
    graph (so ``backward()`` still works).
    """
    B, C, H, W = logits.shape
    if target.shape != (B, H, W):
        raise ValueError(f"target must be [B, H, W] = {[B, H, W]}, got {list(target.shape)}")
    target = target.long()
    valid = _valid_mask(target, C, ignore_index)
    if weight is not None:
        if weight.shape != (B, H, W):
            raise ValueError(f"weight must be [B, H, W] = {[B, H, W]}, got {list(weight.shape)}")
        weight = weight.to(logits.dtype)
        valid = valid & (weight > 0)
    if min_kept is None:
        min_kept = B * H * W // 16
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits, safe_target, reduction="none").reshape(-1)  # [N]
    valid = valid.reshape(-1)
    w = None if weight is None else weight.reshape(-1)
    if thresh >= 1.0:
        hard = valid
    else:
        hard = valid & (ce > -math.log(max(thresh, _EPS)))
    # Rank the valid pixels by CE (descending); keep hard pixels plus the top min_kept.
    order_key = torch.where(valid, ce.detach(), torch.full_like(ce, -1.0))
    order = torch.argsort(order_key, descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    keep = valid & (hard | (rank < int(min_kept)))
    per_px = ce if w is None else ce * w
    n_kept = keep.sum()
    total = torch.where(keep, per_px, torch.zeros_like(per_px)).sum()
    return total / n_kept.clamp(min=1).to(total.dtype)


def blob_ids(
    target: torch.Tensor | np.ndarray,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    connectivity: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Connected components ("blobs") of every class in every target map.

    ``target`` [B, H, W] (or [H, W], treated as B = 1) class indices. Returns ``ids`` [B, H, W]
    long, a global blob index in ``[0, nblobs)`` for each pixel (-1 for ignored pixels and values
    outside ``[0, num_classes)``), and ``blob_class`` [nblobs] long, the class of each blob. Blobs
    are numbered image by image, then class by class. Both tensors live on the CPU; move them with
    ``.to(device)``. Components use ``connectivity`` 4 or 8 (OpenCV).
    """
    t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"target must be [B, H, W] or [H, W], got shape {list(t.shape)}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    t = t.astype(np.int64)
    ids = np.full(t.shape, -1, dtype=np.int64)
    blob_class: list[np.ndarray] = []
    offset = 0
    for b in range(t.shape[0]):
        tb = t[b]
        valid = (tb >= 0) & (tb != ignore_index)
        if num_classes is not None:
            valid &= tb < num_classes
        for c in np.unique(tb[valid]):
            mask = (tb == c).astype(np.uint8)
            n, comp = cv2.connectedComponents(mask, connectivity=connectivity, ltype=cv2.CV_32S)
            sel = comp > 0
            ids[b][sel] = comp[sel].astype(np.int64) - 1 + offset
            blob_class.append(np.full(n - 1, c, dtype=np.int64))
            offset += n - 1
    cls = np.concatenate(blob_class) if blob_class else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(ids), torch.from_numpy(cls)


def consensus_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    connectivity: int = 8,
    blobs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The two per-blob terms of :func:`consensus_loss`, each averaged over blobs.

    Returns ``(nll, kl, nblobs)``: scalars ``nll = mean_b NLL_b`` and ``kl = mean_b KL_b`` (see
    :func:`consensus_loss` for the definitions) and the number of blobs. ``blobs`` optionally gives
    precomputed ``(ids [B, H, W], blob_class [nblobs])`` from :func:`blob_ids`.
    """
    B, C, H, W = logits.shape
    if target.shape != (B, H, W):
        raise ValueError(f"target must be [B, H, W] = {[B, H, W]}, got {list(target.shape)}")
    if blobs is None:
        blobs = blob_ids(target, num_classes=C, ignore_index=ignore_index, connectivity=connectivity)
    ids, blob_class = (x.to(logits.device) for x in blobs)
    nb = int(blob_class.numel())
    if nb == 0:
        zero = logits.sum() * 0.0
        return zero, zero, 0
    logp = F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, C)  # [N, C]
    ids = ids.reshape(-1)
    sel = ids >= 0
    logp, ids = logp[sel], ids[sel]  # [M, C], [M]
    p = logp.exp()
    size = torch.bincount(ids, minlength=nb).to(p.dtype)  # [nb]
    # log pbar_b = logsumexp_{i in b} log p_i - log |b|, as a scattered logsumexp (stable when the
    # softmax saturates: a confidently wrong blob keeps a useful gradient)
    idx = ids[:, None].expand(-1, C)
    peak = torch.full((nb, C), -math.inf, device=p.device, dtype=p.dtype)
    peak = peak.scatter_reduce(0, idx, logp.detach(), reduce="amax", include_self=True)  # [nb, C]
    summed = torch.zeros(nb, C, device=p.device, dtype=p.dtype).index_add_(0, ids, (logp - peak[ids]).exp())
    log_mean = summed.log() + peak - size.log()[:, None]  # [nb, C]
    nll = -log_mean.gather(1, blob_class[:, None]).squeeze(1)  # [nb]
    kl_px = (p * (logp - log_mean[ids])).sum(1)  # [M] KL(p_i || mean_b)
    kl = torch.zeros(nb, device=p.device, dtype=p.dtype).index_add_(0, ids, kl_px) / size
    return nll.mean(), kl.mean(), nb


def consensus_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 10.0,
    beta: float = 5.0,
    ignore_index: int = IGNORE_INDEX,
    connectivity: int = 8,
    blobs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Structure-via-consensus loss (Masi et al., CVPR 2020). Returns a scalar.

    ``logits`` [B, C, H, W]; ``target`` [B, H, W]. Blobs are the connected components of each
    class in each target map (``connectivity`` 4 or 8; ignored pixels belong to no blob). With
    ``p_i = softmax(logits_i)`` and, for a blob ``b`` of class ``y_b`` with ``|b|`` pixels, the
    consensus ``pbar_b = (1/|b|) sum_{i in b} p_i``:

    - ``NLL_b = -log pbar_b[y_b]`` (the blob's label under the blob-averaged softmax);
    - ``KL_b = (1/|b|) sum_{i in b} KL(p_i || pbar_b)`` with ``KL(p||q) = sum_c p_c log(p_c / q_c)``
      (a generalised Jensen-Shannon divergence: zero exactly when all pixels of the blob predict the
      same distribution).

    Both terms are normalised by blob size (a mean over the blob's pixels), so every blob counts
    equally regardless of its area; the loss is the plain average over all blobs of the batch:
    ``loss = (1/n_blobs) sum_b (alpha * NLL_b + beta * KL_b)``. ``log pbar`` is computed as a
    per-blob logsumexp of the log-softmax (finite even when the softmax saturates). Computed in
    float32 (or float64 for float64 logits). With no blob the result is a graph-keeping zero.
    """
    nll, kl, _ = consensus_terms(logits, target, ignore_index, connectivity, blobs)
    return alpha * nll + beta * kl


@dataclass
class ParserLossConfig:
    """Weights of :func:`total_parser_loss`.

    ``ohem_thresh``/``ohem_min_kept``: see :func:`ohem_cross_entropy` (``None`` = B*H*W // 16).
    ``aux_weight``: weight of each auxiliary head's OHEM (1 in the reference).
    ``consensus_weight``: multiplier of the consensus loss on the main head (0 = off);
    ``consensus_alpha``/``consensus_beta``: its two term weights.
    """

    ohem_thresh: float = 0.7
    ohem_min_kept: int | None = None
    aux_weight: float = 1.0
    consensus_weight: float = 0.0
    consensus_alpha: float = 10.0
    consensus_beta: float = 5.0
    connectivity: int = 8
    ignore_index: int = IGNORE_INDEX

    @classmethod
    def from_any(cls, cfg: ParserLossConfig | Mapping | None) -> ParserLossConfig:
        """Accept a config, a mapping of its fields (unknown keys raise) or ``None`` (defaults)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, Mapping):
            names = {f.name for f in fields(cls)}
            unknown = set(cfg) - names
            if unknown:
                raise ValueError(f"unknown parser loss options {sorted(unknown)}; known: {sorted(names)}")
            return cls(**dict(cfg))
        raise TypeError(f"cfg must be a ParserLossConfig, a mapping or None, got {type(cfg).__name__}")


def _at_target_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def total_parser_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    cfg: ParserLossConfig | Mapping | None = None,
    weight: torch.Tensor | None = None,
    blobs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training loss of a BiSeNet-style parser: ``(loss, parts)``.

    ``outputs``: the heads ``(main, aux16, aux32)``, each [B, C, h, w] logits (a single tensor is
    taken as the main head only); heads not at the target's size are upsampled bilinearly
    (``align_corners=True``, as the reference). ``target`` [B, H, W]; ``weight`` optional [B, H, W]
    per-pixel weights for the OHEM terms; ``blobs`` optional precomputed :func:`blob_ids`.

    ``loss = ohem(main) + aux_weight * (ohem(aux16) + ohem(aux32)) + consensus_weight *
    consensus(main)``. ``parts`` holds detached scalars: ``ohem_main``, ``ohem_aux16``,
    ``ohem_aux32`` (present heads only), ``consensus`` (when enabled) and ``total``.
    """
    cfg = ParserLossConfig.from_any(cfg)
    heads = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    if not heads:
        raise ValueError("outputs must hold at least the main head")
    size = tuple(target.shape[-2:])
    names = ["ohem_main", "ohem_aux16", "ohem_aux32"] + [f"ohem_aux{i}" for i in range(3, len(heads))]
    parts: dict[str, torch.Tensor] = {}
    total = None
    main = _at_target_size(heads[0], size)
    for i, (name, head) in enumerate(zip(names, heads)):
        lg = main if i == 0 else _at_target_size(head, size)
        term = ohem_cross_entropy(lg, target, cfg.ohem_thresh, cfg.ohem_min_kept, cfg.ignore_index, weight)
        parts[name] = term.detach()
        term = term if i == 0 else cfg.aux_weight * term
        total = term if total is None else total + term
    if cfg.consensus_weight > 0:
        cons = consensus_loss(
            main, target, cfg.consensus_alpha, cfg.consensus_beta, cfg.ignore_index, cfg.connectivity, blobs
        )
        parts["consensus"] = cons.detach()
        total = total + cfg.consensus_weight * cons
    parts["total"] = total.detach()
    return total, parts
