"""Training objectives (one file each), chosen per stage in the recipe: `objective: NAME` with its
typed `objective_settings`. How to write one: `vlm/train/objectives/base.py`.

    next_token          cross-entropy of the assistant turns (chat batches)
    grounded_next_token next_token + the zoom's relevance cross-entropy against the answer's region (bbox)
    contrastive         InfoNCE over query / target embeddings, negatives gathered across ranks (pair batches)
    masked_prediction   masked audio frames: per-codebook cross-entropy + a regression target (clip batches)
"""
from vlm.train.objectives import contrastive, grounded, masked_prediction, next_token  # noqa: F401  (registration)
from vlm.train.objectives.base import (  # noqa: F401
    NO_GRADIENT,
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    TaskModule,
    build_objective,
    check_settings,
)
