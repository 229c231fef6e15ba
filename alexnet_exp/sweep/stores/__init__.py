"""What a study keeps: the Optuna study and its storage (study_store.py), the MLflow runs (tracking.py, the only
writer), checkpoints and best weights (trial_state.py), retries of a storage that is briefly away (retries.py),
and signals held while a store is written (interrupts.py)."""
