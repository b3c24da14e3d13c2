"""Evaluation from a model's weights alone: storage, cost, speed, robustness, sensitivity."""
