"""``hydra/sweeper=optuna``: semseg's Hydra sweeper on Optuna's ask-and-tell interface.

It keeps hydra-optuna-sweeper's config keys (``sampler``, ``direction``, ``n_trials``, ``n_jobs``,
``storage``, ``study_name``, ``params``, ``max_failure_rate``, ``custom_search_space``) and adds
what that plugin lacked: studies that resume and that several launches share, pruning from the
jobs' per-epoch ``val/miou`` (``pruner``), and plots of the search. ``config.py`` registers the
configs; ``optuna_sweeper.py`` is the sweeper. Optuna is imported only when a search starts.
"""
