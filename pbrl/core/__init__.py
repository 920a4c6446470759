"""The preference loss core: scores, links and losses as pure functions of tensors (depends on torch only)."""

from pbrl.core.diffusion import diffusion_dpo_loss, diffusion_implicit_reward
from pbrl.core.links import (
    biased_logistic_link,
    hinge_link,
    logistic_link,
    plackett_luce_link,
    preference_accuracy,
    ranked_accuracy,
    robust_logistic_link,
    squared_link,
    triplet_link,
)
from pbrl.core.losses import (
    DPO_LOSS_TYPES,
    beta_elbo_loss,
    beta_kl,
    beta_prior_nll,
    cpl_loss,
    cpl_ranked_loss,
    dpo_loss,
    unit_norm_penalty,
)
from pbrl.core.offline_rl import advantage_weights, awr_actor_loss, expectile_loss, td_target, twin_q_loss
from pbrl.core.scores import cpl_score, discount_weights, dpo_implicit_reward, masked_discounted_sum, segment_return

__all__ = [
    "advantage_weights",
    "awr_actor_loss",
    "expectile_loss",
    "td_target",
    "twin_q_loss",
    "DPO_LOSS_TYPES",
    "beta_elbo_loss",
    "beta_kl",
    "beta_prior_nll",
    "biased_logistic_link",
    "cpl_loss",
    "cpl_ranked_loss",
    "cpl_score",
    "diffusion_dpo_loss",
    "diffusion_implicit_reward",
    "discount_weights",
    "dpo_implicit_reward",
    "dpo_loss",
    "hinge_link",
    "logistic_link",
    "masked_discounted_sum",
    "plackett_luce_link",
    "preference_accuracy",
    "ranked_accuracy",
    "robust_logistic_link",
    "segment_return",
    "squared_link",
    "triplet_link",
    "unit_norm_penalty",
]
