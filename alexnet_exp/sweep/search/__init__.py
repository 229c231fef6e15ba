"""What the sweep trains next: the space sampled (space.py), the samplers and pruners, the repeated seeds of the
best configurations and their statistics, and which trials count toward the budget. No MLflow here."""
