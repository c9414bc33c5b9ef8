"""Trades to candles, features and labels: the pure step, the feature pipeline and its store."""
