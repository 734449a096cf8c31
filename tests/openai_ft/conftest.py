"""Fixtures of the OpenAI backend's tests: the emulator (tests/support/aimock.py) and, from
openai_helpers.py, the API key in the environment, sample data files and a stage context."""

from aimock import aimock, aimock_factory, aimock_server  # noqa: F401  (pytest fixtures)
from openai_helpers import data, env_key, make_ctx  # noqa: F401  (pytest fixtures)
