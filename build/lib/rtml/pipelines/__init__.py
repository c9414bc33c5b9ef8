"""Feature and training pipelines: market data to features and labels, features to models."""
