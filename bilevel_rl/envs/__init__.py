"""Environment construction: vectorised gymnasium envs that always keep the true reward."""

from bilevel_rl.envs.make import EnvRewardScale, TrueRewardInfo, check_env_id, make_eval_env, make_train_env

__all__ = ["EnvRewardScale", "TrueRewardInfo", "check_env_id", "make_eval_env", "make_train_env"]
