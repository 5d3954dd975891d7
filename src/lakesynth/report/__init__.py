"""What a run reports: the run log and MLflow, the dataset figures, the notebooks' view of the tables."""
