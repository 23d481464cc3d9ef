"""The engine's vocabulary, with no Ray, Optuna or MLflow in it: keys, records, decisions, problems."""
