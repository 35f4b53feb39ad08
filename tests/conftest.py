"""Test-wide setup: 8 forced CPU devices (sharding tests) and the shared fixtures folder."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

SHARED_FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture
def shared_fixtures():
  """`../shared/fixtures`; skips with the reason where absent, and fails under CI (which has it)."""
  if not SHARED_FIXTURES.is_dir():
    message = f"{SHARED_FIXTURES} is absent (it ships beside the checkout in CI, not in a fresh clone)"
    if os.environ.get("CI"):
      pytest.fail(message + "; CI must have it")
    pytest.skip(message)
  return SHARED_FIXTURES
