"""Environment construction: vectorised gymnasium envs that always keep the true reward."""

from bilevel_rl.envs.goal_grid import GoalGridEnv  # importing registers GoalGrid-v0
from bilevel_rl.envs.incentive_game import IncentiveGameEnv  # importing registers IncentiveGame-v0
from bilevel_rl.envs.make import EnvRewardScale, TrueRewardInfo, check_env_id, make_eval_env, make_train_env
from bilevel_rl.envs.tax_design import TaxDesignEnv  # importing registers TaxDesign-v0

__all__ = [
    "EnvRewardScale",
    "GoalGridEnv",
    "IncentiveGameEnv",
    "TaxDesignEnv",
    "TrueRewardInfo",
    "check_env_id",
    "make_eval_env",
    "make_train_env",
]
