"""Shared fixtures: the real embedded stack, started once per test session on free ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtml.app.processes import free_port
from rtml.app.stack import Stack
from rtml.settings import Settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded Kafka-API broker, Redis and MLflow server, with feature_repo applied."""
    chosen = Settings(
        state_dir=tmp_path_factory.mktemp("rtml-state"),
        kafka_port=free_port(),
        redis_port=free_port(),
        mlflow_port=free_port(),
        up_timeout_s=180,
    )
    stack = Stack(chosen, repick_ports=True)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack_settings(stack: Stack) -> Settings:
    """The session stack's settings, with the ports its services listen on."""
    return stack.settings


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture
def topic_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def state_dir(stack: Stack) -> Path:
    return stack.settings.state
