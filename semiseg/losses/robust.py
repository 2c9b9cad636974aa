"""DLUNet's robust segmentation loss: noise-robust Dice (NRD) + Taylor cross-entropy (TCE).

Both bring the mean-absolute-error idea into Dice and CE so that wrong (pseudo-)labels, which CE
punishes without bound, pull less on the network (DLUNet, eqs. 6-8):

- NRD (Wang et al., COPLE-Net, TMI 2020): sum |p - y|^gamma / (sum p^2 + sum y^2 + eps).
  gamma = 2 is the (squared) Dice loss, gamma = 1 a weighted MAE; DLUNet does not print its gamma,
  so the COPLE-Net value 1.5 is the default.
- TCE (Feng et al., IJCAI 2020): the order-n Taylor series of -log(p_t) around p_t = 1,
  sum_{k=1..n} (1 - p_t)^k / k; n = 2 in DLUNet eq. 8. Order 1 is MAE, order -> inf is CE.
"""
from __future__ import annotations

import torch

from semiseg.losses import one_hot

NRD_GAMMA = 1.5  # COPLE-Net default; DLUNet eq. 7 leaves gamma unspecified
TCE_ORDER = 2  # DLUNet eq. 8


def noise_robust_dice(
    probs: torch.Tensor,
    onehot: torch.Tensor,
    gamma: float = NRD_GAMMA,
    eps: float = 1e-5,
    include_background: bool = False,
) -> torch.Tensor:
    """Mean over classes of batch NRD; probs and onehot are (B, K, ...).

    Statistics are summed over batch and voxels per class (batch Dice, as nnU-Net), and the background
    is left out by default like :func:`semiseg.losses.soft_dice`, so it cannot swamp small organs.
    """
    if not 1.0 <= gamma <= 2.0:
        raise ValueError(f"NRD gamma must lie in [1, 2], got {gamma}")
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0,) + tuple(range(2, probs.ndim))
    numer = (probs - onehot).abs().pow(gamma).sum(dims)
    denom = probs.pow(2).sum(dims) + onehot.pow(2).sum(dims) + eps
    return (numer / denom).mean()


def taylor_ce(probs: torch.Tensor, target: torch.Tensor, order: int = TCE_ORDER) -> torch.Tensor:
    """Voxel mean of sum_{k=1..order} (1 - p_t)^k / k; probs (B, K, ...), target (B, [1,] ...) ints.

    Averaged over voxels (DLUNet writes a sum) so its scale, like CE's, does not depend on patch size.
    """
    if order < 1:
        raise ValueError(f"Taylor CE order must be >= 1, got {order}")
    if target.ndim == probs.ndim:
        target = target[:, 0]
    p_t = probs.gather(1, target.long().unsqueeze(1)).squeeze(1)
    q = 1.0 - p_t
    loss = torch.zeros_like(q)
    for k in range(1, order + 1):
        loss = loss + q.pow(k) / k
    return loss.mean()


def robust_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    gamma: float = NRD_GAMMA,
    order: int = TCE_ORDER,
) -> torch.Tensor:
    """DLUNet's L_RS = L_NRD + L_TCE (eq. 6) from logits (B, K, ...) and labels (B, [1,] ...)."""
    probs = torch.softmax(logits.float(), dim=1)
    label = label if label.ndim == logits.ndim else label.unsqueeze(1)  # (B, 1, ...): unambiguous for one_hot
    return noise_robust_dice(probs, one_hot(label, logits.shape[1]), gamma=gamma) + taylor_ce(probs, label, order=order)
