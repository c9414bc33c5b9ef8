"""rtml: real-time machine learning with incremental re-training, centred on a feature store."""

__version__ = "0.1.0"
