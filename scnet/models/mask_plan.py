"""Sample consistency (paper Sec. 3.1, Fig. 2-3): which box stage feeds each mask branch, and how.

The flags are read here, once, into a table of mask branches that `RoIHeads` builds its heads from and
follows in training and at test time:

| sample_consistency | mask_flow | branches                                  | loss names, weights      |
|--------------------|-----------|-------------------------------------------|--------------------------|
| none               | cascade   | one 4-conv branch per stage, fed by it    | stage{t}_mask, alpha_t   |
| none               | htc       | the same, fed by the stage's refined boxes (re-sampled), mask information flow from the earlier branches | stage{t}_mask, alpha_t |
| naive              | cascade   | one 4-conv branch per stage, all fed by the last stage | mask{t}, alpha_t |
| effective          | cascade   | one 12-conv residual branch fed by the last stage | mask, sum(alpha) (Eq. 4) |

Feature relay adds, to each branch's RoI features, the relay of its feeding stage's box features:
one relay per stage without sample consistency, one for the last stage with it.
"""
from __future__ import annotations

from dataclasses import dataclass

from scnet.config import ModelConfig


@dataclass(frozen=True)
class MaskBranch:
    head: int  # index in RoIHeads.mask_heads
    stage: int  # the box stage whose positives (and box features, for the relay) feed it
    loss_name: str
    loss_weight: float
    relay: int | None  # index in RoIHeads.feature_relays, or None without feature relay
    deep: bool  # SCNet's deep residual branch (12 convs as residual blocks of two) instead of 4 plain convs
    flow_in: bool  # HTC: the branch also takes the mask information flow of the branches before it


@dataclass(frozen=True)
class MaskPlan:
    branches: tuple[MaskBranch, ...]
    # HTC: a stage's mask branch trains on the stage's refined boxes, assigned and sampled again
    resample_refined: bool

    @property
    def num_relays(self) -> int:
        return len({b.relay for b in self.branches if b.relay is not None})

    def fed_by(self, stage: int) -> tuple[MaskBranch, ...]:
        return tuple(b for b in self.branches if b.stage == stage)

    @property
    def test_branches(self) -> tuple[MaskBranch, ...]:
        """The branches whose probabilities are averaged at test time. With the information flow only
        the last: MMDetection 3.3.0's HTC runs the flow through every branch but keeps the last
        prediction (its ensemble list is appended once, after the loop), and HTC numbers must stay
        comparable with its model zoo."""
        if any(b.flow_in for b in self.branches):
            return self.branches[-1:]
        return self.branches


def build_mask_plan(cfg: ModelConfig) -> MaskPlan:
    """The mask branches of `cfg`: the only reader of `sample_consistency` in the model."""
    stages, alpha = cfg.stages, cfg.stage_loss_weights
    relay = cfg.feature_relay
    htc = cfg.mask_flow == "htc"
    last = stages - 1
    if cfg.sample_consistency == "none":
        branches = tuple(MaskBranch(head=t, stage=t, loss_name=f"stage{t}_mask", loss_weight=alpha[t],
                                    relay=t if relay else None, deep=False, flow_in=htc and t > 0)
                         for t in range(stages))
    elif cfg.sample_consistency == "naive":
        branches = tuple(MaskBranch(head=t, stage=last, loss_name=f"mask{t}", loss_weight=alpha[t],
                                    relay=0 if relay else None, deep=False, flow_in=False)
                         for t in range(stages))
    elif cfg.sample_consistency == "effective":
        branches = (MaskBranch(head=0, stage=last, loss_name="mask", loss_weight=float(sum(alpha)),
                               relay=0 if relay else None, deep=True, flow_in=False),)
    else:
        raise ValueError(f"sample_consistency={cfg.sample_consistency!r} has no mask plan")
    return MaskPlan(branches, resample_refined=htc)
