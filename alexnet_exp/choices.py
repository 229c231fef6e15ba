"""The names a configuration chooses from, each list once. config.py makes each a `Literal` (an unknown value
is a config error listing these), and each builder is a table keyed by the same names (train/optim.py,
samplers.py, pruning.py, data.py, augment.py); tests/test_choices.py checks that every name has its builder
and every builder its name. Pure data: no torch, Optuna or pydantic."""

OPTIMIZERS = ("sgd", "adam", "adamw")
BATCH_SCALINGS = ("linear", "sqrt", "none")  # how an optimiser's rate follows the batch size (rates.py)
SCHEDULES = ("none", "step", "plateau", "cosine", "onecycle")
SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes", "qmc")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")
DATASETS = ("cifar10", "cifar100", "synthetic", "digits", "glyphs", "imagefolder")
NORMALIZATIONS = ("none", "dataset", "imagenet", "cifar10_constants")
