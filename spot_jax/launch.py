"""`spot-jax launch`: install spot_jax on every worker of a Cloud TPU VM / pod slice and start a job.

The same gin-configured command runs on every worker; `--jax_distributed` makes each process call
`jax.distributed.initialize()`, which on Cloud TPU reads the slice's topology from the metadata server.

  spot-jax launch --tpu my-v4-32 --zone us-central2-b -- train \
    --gin_file=models/t5_1_1_lm_adapted.gin --gin_file=prompts/random_uniform.gin \
    --gin_file=models/sizes/xl.gin --gin_file=runs/prompt_train.gin \
    --gin.MODEL_DIR="'gs://my-bucket/rte_xl'" --gin.MIXTURE_OR_TASK_NAME="'spot_glue_rte_v200'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_xl/checkpoint_1100000'"
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from typing import List, Sequence

log = logging.getLogger("spot_jax.launch")

JOBS = ("train", "eval", "infer")
REMOTE_DIR = "spot_jax_src"
ARCHIVE = "spot_jax_src.tar.gz"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="spot-jax launch", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tpu", required=True, help="Cloud TPU VM name (a single host or a pod slice)")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--source", default="local",
                 help="'local' (ship this checkout with git archive) or a pip spec such as "
                      "'git+https://github.com/ORG/spot_jax@main'")
  p.add_argument("--jax_tpu_spec", default=None,
                 help="pip spec of JAX for TPU, installed after requirements.txt (default: jax[tpu] at "
                      "the jax version requirements.txt installed on the worker)")
  p.add_argument("--skip_install", action="store_true", help="workers already have spot_jax installed")
  p.add_argument("--dry_run", action="store_true", help="print the gcloud commands instead of running them")
  p.add_argument("job", choices=JOBS, help="the spot-jax job every worker runs")
  p.add_argument("job_args", nargs=argparse.REMAINDER, help="flags of the job (gin files and bindings)")
  return p


def _gcloud(args, verb: str, *rest: str) -> List[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, f"--zone={args.zone}", "--worker=all"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + list(rest)


def _check_job_args(job_args: Sequence[str]):
  """Output directories must be on GCS; read as the job will read its flags (`--gin.X=Y`, `--gin.X Y`,
  `--gin_bindings=X=Y`), so no spelling slips past."""
  from spot_jax import gin_utils  # pylint: disable=g-import-not-at-top
  bindings, rest = gin_utils.split_gin_flags(job_args)
  bindings += [a.split("=", 1)[1] for a in rest if a.startswith("--gin_bindings=")]
  bindings += [b for a, b in zip(rest, rest[1:]) if a == "--gin_bindings"]
  for binding in bindings:
    name, _, value = binding.partition("=")
    name = name.strip()
    if name in ("MODEL_DIR", "EVAL_OUTPUT_DIR", "INFER_OUTPUT_DIR") and "gs://" not in value:
      raise SystemExit(f"launch: {name} must be on GCS (gs://...) so every worker and later runs see "
                       f"the same files; got {name}={value.strip()}")


# The workers' Python must satisfy pyproject's requires-python (stock TPU VM images may have 3.10).
_PYTHON_CHECK = ("python3 -c 'import sys; sys.exit(sys.version_info < (3, 11) and \"spot_jax needs Python "
                 ">= 3.11 on the workers; this image has \" + sys.version.split()[0])'")
# jax[tpu] at the version requirements.txt pinned for the worker's Python, not the newest one.
_PINNED_TPU_JAX = ("python3 -m pip install -q \"jax[tpu]==$(python3 -c 'import jax; print(jax.__version__)')\" "
                   "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html")


def checkout_root(here: str = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) -> str:
  """The git work tree this spot_jax runs from (what `--source local` ships), or SystemExit."""
  try:
    root = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    raise SystemExit(f"launch: --source local ships this checkout with git archive, but {here} is not a git "
                     "checkout: run from a clone, or pass --source git+https://...") from None
  dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                         capture_output=True, text=True).stdout  # "XY path" lines: no strip()
  if dirty.strip():
    files = [line[3:] for line in dirty.splitlines() if line.strip()]
    shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    log.warning("launch: %s has uncommitted changes (%s); git archive ships HEAD without them: commit them "
                "to ship them", root, shown)
  return root


def build_commands(args) -> List[List[str]]:
  """The gcloud commands, in order: ship the source (optional), install, run the job on all workers."""
  job_args = [a for a in args.job_args if a != "--"]
  _check_job_args(job_args)
  commands = []
  if args.source == "local" and not args.skip_install:
    archive = os.path.abspath(ARCHIVE)
    commands.append(["git", "-C", checkout_root(), "archive", "--format=tar.gz", f"--output={archive}",
                     "HEAD"])
    commands.append(_gcloud(args, "scp", archive, f"{args.tpu}:~/{ARCHIVE}"))
  if not args.skip_install:
    if args.source == "local":
      fetch = f"mkdir -p ~/{REMOTE_DIR} && tar -xzf ~/{ARCHIVE} -C ~/{REMOTE_DIR}"
      install = (f"cd ~/{REMOTE_DIR} && python3 -m pip install -q -r requirements.txt && "
                 f"python3 -m pip install -q --no-deps -e .")
    else:
      fetch = "true"
      install = f"python3 -m pip install -q {shlex.quote(args.source)}"
    tpu_jax = (f"python3 -m pip install -q -U {shlex.quote(args.jax_tpu_spec)}" if args.jax_tpu_spec
               else _PINNED_TPU_JAX)
    commands.append(_gcloud(args, "ssh", args.tpu,
                            f"--command={_PYTHON_CHECK} && {fetch} && {install} && {tpu_jax}"))
  run = ["python3", "-m", "spot_jax", args.job, *job_args, "--jax_distributed"]
  where = f"cd ~/{REMOTE_DIR} && " if args.source == "local" else ""
  commands.append(_gcloud(args, "ssh", args.tpu, f"--command={where}{shlex.join(run)}"))
  return commands


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  commands = build_commands(args)
  for cmd in commands:
    print("+ " + shlex.join(cmd), flush=True)
    if not args.dry_run:
      subprocess.run(cmd, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
