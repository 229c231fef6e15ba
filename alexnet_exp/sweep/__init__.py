"""The sweep wing: `python -m alexnet_exp.sweep CONFIG` runs an Optuna study of AlexNet trials tracked in MLflow.

cli.py is the command (its steps: set up, join, finalize); lifecycle.py sets up, runs and finishes a study;
objective.py runs one trial; workers.py and processes.py run trials in this process or in worker processes.
search/ decides what to train (space, samplers, pruners, repeated seeds, the budget); stores/ keeps what the
study knows (the Optuna study, MLflow runs, checkpoints and weights, storage retries). keys.py names what is
written to Optuna and MLflow; upstream.py lists the places Optuna's or MLflow's non-public API is used.
Imports point one way: cli -> lifecycle -> objective -> stores -> search -> keys, upstream -> the training core.
"""
