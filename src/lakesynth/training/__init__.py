"""The training layer: training examples, fine-tune backends, the student, the exported dataset."""
