"""Serving: predictions over HTTP and Kafka from the champion model, and monitoring."""
