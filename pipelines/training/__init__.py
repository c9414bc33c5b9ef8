"""Learning: models, the learner and its gate, the training dataset and the trainer."""
