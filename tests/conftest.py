"""Test-wide setup: 8 forced CPU devices (sharding tests) and the shared fixtures folder."""
import importlib.util  # gin-config 0.5 needs it imported first
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib
import shutil
import tempfile

import pytest

SHARED_FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"

# One persistent compilation cache for the whole run, fresh each run: the tests compile the same tiny
# programs again and again, in both xdist workers and in the CLI processes they start (which inherit
# the environment). A training CLI run's compile-bound start-up drops by about half on a warm cache.
# pytest's main process makes it before the workers start, and removes it at the end.
_CACHE_OWNER = "SPOT_JAX_TEST_JAX_CACHE_OWNER"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="spot_jax_test_jax_cache_")
  os.environ[_CACHE_OWNER] = str(os.getpid())
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  # A size limit (never reached) makes JAX read and write entries under a file lock (filelock): two
  # processes compiling one program at once could otherwise read a half-written entry and warn.
  if importlib.util.find_spec("filelock") is not None:  # JAX refuses a size limit without it
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))


def pytest_unconfigure(config):
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def shared_fixtures():
  """`../shared/fixtures`; skips with the reason where absent, and fails under CI (which has it)."""
  if not SHARED_FIXTURES.is_dir():
    message = f"{SHARED_FIXTURES} is absent (it ships beside the checkout in CI, not in a fresh clone)"
    if os.environ.get("CI"):
      pytest.fail(message + "; CI must have it")
    pytest.skip(message)
  return SHARED_FIXTURES


class _DiskFull:
  """`fileio.open_file` that raises OSError("disk full") on the second call since `arm()`: a write
  that fails midway. `disarm()` restores the real function."""

  def __init__(self, monkeypatch):
    from spot_jax import fileio
    self._monkeypatch, self._fileio, self._real = monkeypatch, fileio, fileio.open_file
    self.calls = []

  def _open(self, path, mode):
    self.calls.append(path)
    if len(self.calls) == 2:
      raise OSError("disk full")
    return self._real(path, mode)

  def arm(self):
    self.calls.clear()
    self._monkeypatch.setattr(self._fileio, "open_file", self._open)

  def disarm(self):
    self._monkeypatch.setattr(self._fileio, "open_file", self._real)


@pytest.fixture
def disk_full(monkeypatch):
  return _DiskFull(monkeypatch)


@pytest.fixture
def orbax_reads(monkeypatch):
  """The names of the arrays orbax reads from disk (each passes through its numpy handler)."""
  from orbax.checkpoint import type_handlers
  read = []
  deserialize = type_handlers.NumpyHandler.deserialize

  async def spy(self, infos, args=None):
    read.extend(info.name for info in infos)
    return await deserialize(self, infos, args)
  monkeypatch.setattr(type_handlers.NumpyHandler, "deserialize", spy)
  return read


@pytest.fixture(autouse=True)
def fresh_gin():
  """Each test ends with gin cleared: a test that configured gin (e.g. `gin_utils.configure`) and left
  it made a later test in the same worker run with its bindings (a `log_period` from another test's
  command line logged an extra record in test_train's resume test)."""
  yield
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()


# The eval/infer CLI tests' training MODEL_DIR with three exports (test_eval_infer_cli, test_eval_prompt_steps).
from eval_cli_setup import run_dir  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import


# The SPoT pipeline tests' fixtures (test_pipeline, test_transfer_strategies, test_pipeline_cli; their
# constants are spot_pipeline_setup.py). One cache directory and one trained library per process.
@pytest.fixture(scope="session")
def jax_cache_dir():
  return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])


@pytest.fixture(scope="module")
def compilation_cache(jax_cache_dir):
  """JAX's persistent compilation cache on for a module (`pytestmark = usefixtures(...)`)."""
  import spot_pipeline_setup as setup
  with setup.compilation_cache(jax_cache_dir) as path:
    yield path


@pytest.fixture(scope="session")
def frozen():
  """The tiny frozen model `(config, params)` of the SPoT pipeline tests."""
  import jax
  from spot_jax.model import init_params
  from spot_pipeline_setup import CFG
  return CFG, init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def library(frozen, tmp_path_factory, jax_cache_dir):
  """(library, records, root): the bundled source tasks trained into a library (read-only)."""
  import spot_pipeline_setup as setup
  from spot_jax.spot import pipeline
  from spot_jax.spot.library import PromptLibrary
  root = tmp_path_factory.mktemp("spot")
  with setup.compilation_cache(jax_cache_dir):
    records = pipeline.train_source_prompts(frozen, setup.SOURCES, str(root / "lib"), str(root / "sources"),
                                            setup.SOURCE_STEPS, setup.RUN)
  return PromptLibrary(str(root / "lib")), records, root



# The longest tests (about 30-70 s each alone on 2 cores: CLI processes, end-to-end runs) go first.
# pytest-xdist's worksteal hands each worker a contiguous part of the list and lets an idle worker take
# from the end of the other's: a long test left at the end would keep one core busy alone.
_LONG_FIRST = (
    "test_demo.py::test_quick_demo_runs_end_to_end",
    "test_train_processes.py::",
    "test_gcs_emulator.py::test_train_resume_and_load_prompt_on_gs",
    "test_eval_infer_cli.py::test_eval_in_two_processes",
    "test_pipeline_cli.py::test_spot_cli_runs_the_whole_pipeline_with_a_baseline",
    "test_pipeline.py::test_a_rerun_reuses_each_runs_stored_evaluation_unless_what_it_depends_on_changed",
    "test_bench_attention_check.py::test_checks_each_form_against_its_reference",
    "test_bench_attention_kernels.py::test_variants_match_the_models_call",
    "test_fused_norm.py::test_model_gives_the_same_loss_and_prompt_gradient_with_the_kernel",
    "test_gin_utils.py::test_two_processes_with_different_settings",
    "test_process_startup.py::",
)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: not any(part in item.nodeid for part in _LONG_FIRST))
