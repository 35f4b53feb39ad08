"""Training with MODEL_DIR=gs://bucket/run against a local GCS emulator, through the real clients.

tensorstore (orbax's arrays) is pointed at the emulator with TENSORSTORE_GCS_HTTP_URL, and
google-cloud-storage (orbax asks it whether the bucket has hierarchical namespace) with
STORAGE_EMULATOR_HOST. TensorFlow's GCS filesystem (tf.io.gfile, and etils.epath, orbax's path layer,
which uses tf.io.gfile when TensorFlow is installed) has its endpoints compiled in and no override,
but its libcurl honours HTTPS_PROXY and CURL_CA_BUNDLE: a local CONNECT proxy terminates TLS with a
certificate of a throwaway CA and passes the bytes to the emulator. Four deviations of the
emulator from GCS are patched here (`_patch_emulator`); nothing of spot_jax is replaced.

No network is used: every client's endpoint is 127.0.0.1 (the proxy relays whatever host a CONNECT
names to the emulator's local port, and auth is GOOGLE_AUTH_TOKEN_FOR_TESTING / the emulator's
anonymous access), so the test runs where nothing but the package registries is reachable.
"""
import json
import os
import pathlib
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


# (object name, Range header, bytes sent) of every download the emulator served, in order.
SERVED = []


def _patch_emulator():
  """Where gcp-storage-emulator differs from GCS in what TensorFlow's client sends or expects."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects
  if getattr(server, "_spot_jax_patched", False):
    return
  read_raw, read_data, create_upload = server._read_raw_data, server._read_data, objects._create_resumable_upload

  def raw(handler):  # RFC 9112 6.3: chunked wins over Content-Length (TF's uploads send both)
    if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
      del handler.headers["Content-Length"]
    return read_raw(handler)

  def data(handler, query):  # an empty upload (TF's directory marker) is b"", not "no body"
    out = read_data(handler, query)
    return b"" if out is None and (query.get("uploadType") == ["media"] or "upload_id" in query) else out

  def create(request, response, storage):  # the session URL keeps the https the client came by
    out = create_upload(request, response, storage)
    location = response._headers.get("Location", "")
    if location.startswith("http://") and request.get_header("Host", "").endswith("googleapis.com"):
      response._headers["Location"] = "https://" + location[len("http://"):]
    return out

  def storage_layout(request, response, storage):  # TF's directory rename asks for it first
    response.json({"kind": "storage#storageLayout", "bucket": request.params["bucket_name"],
                   "location": "US", "locationType": "multi-region", "hierarchicalNamespace": {"enabled": False}})
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    # GCS stamps a media download with the object's generation; tensorstore reads it (OCDBT's
    # conditional manifest writes compare it), and without it took generation 0, which it refused
    # later as "Malformed StorageGeneration" (about one run in five).
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration") or "1")
    except Exception:  # pylint: disable=broad-except  (a missing object: download answers 404)
      pass
    out = download(request, response, storage, *args, **kwargs)
    content = response._content
    SERVED.append((request.params.get("object_id"), request.get_header("range", None),
                   len(content.encode() if isinstance(content, str) else content)))
    return out

  parse_request = server.RequestHandler.parse_request

  def parse_and_continue(handler):  # libcurl waits 1 s for "100 Continue" before each upload's body
    ok = parse_request(handler)
    if ok and (handler.headers.get("Expect") or "").lower() == "100-continue":
      handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
      handler.wfile.flush()
    return ok

  server.RequestHandler.parse_request = parse_and_continue
  server._read_raw_data, server._read_data, objects._create_resumable_upload = raw, data, create
  objects.download = download_with_generation  # objects.get (alt=media) calls it by this name
  handlers = tuple((regex, {m: download_with_generation if f is download else f for m, f in methods.items()})
                   for regex, methods in server.HANDLERS)
  server.HANDLERS = ((r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/storageLayout$", {"GET": storage_layout}),
                     *handlers)
  server._spot_jax_patched = True


def _certificates(d):
  """A throwaway CA and a certificate for TF's two GCS hosts, signed by it (openssl CLI)."""
  def run(*args):
    subprocess.run(args, check=True, capture_output=True, cwd=d)
  run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
      "-subj", "/CN=spot_jax test CA", "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
  run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "host.key", "-out", "host.csr",
      "-subj", "/CN=www.googleapis.com")
  (d / "ext.cnf").write_text("subjectAltName=DNS:www.googleapis.com,DNS:storage.googleapis.com\n"
                             "basicConstraints=CA:FALSE\n")
  run("openssl", "x509", "-req", "-in", "host.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-out", "host.pem", "-days", "1", "-extfile", "ext.cnf")
  return d / "ca.pem", d / "host.pem", d / "host.key"


class _TlsProxy:
  """HTTPS_PROXY for libcurl: answers CONNECT, terminates TLS, and relays the bytes to `port`."""

  def __init__(self, port, cert, key):
    self.port_up = port
    self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.ctx.load_cert_chain(cert, key)
    self.sock = socket.create_server(("127.0.0.1", 0))
    self.port = self.sock.getsockname()[1]
    self.hosts = set()
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self):
    while True:
      try:
        conn, _ = self.sock.accept()
      except OSError:
        return
      threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

  def _relay(self, conn):
    head = b""
    while b"\r\n\r\n" not in head:
      chunk = conn.recv(4096)
      if not chunk:
        return conn.close()
      head += chunk
    self.hosts.add(head.split()[1].decode())
    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    tls, up = None, None
    try:
      tls = self.ctx.wrap_socket(conn, server_side=True)
      up = socket.create_connection(("127.0.0.1", self.port_up))
      while True:
        ready = [tls] if tls.pending() else select.select([tls, up], [], [], 120)[0]
        if not ready:
          break
        src, dst = (tls, up) if tls in ready else (up, tls)
        data = src.recv(65536)
        if not data:
          break
        dst.sendall(data)
    except OSError:
      pass
    finally:
      for s in (tls or conn, up):
        if s is not None:
          s.close()


@pytest.fixture
def gcs(tmp_path):
  """(environment for a child process, emulator URL): a bucket named `bucket`."""
  emulator = pytest.importorskip("gcp_storage_emulator.server", reason="pip install gcp-storage-emulator")
  pytest.importorskip("google.cloud.storage", reason="orbax needs google-cloud-storage for gs://")
  if shutil.which("openssl") is None:
    pytest.skip("the openssl command makes the proxy's certificate")
  _patch_emulator()
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
  server.start()
  ca, cert, key = _certificates(tmp_path)
  proxy = _TlsProxy(port, cert, key)
  url = f"http://127.0.0.1:{port}"
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TENSORSTORE_GCS_HTTP_URL=url, STORAGE_EMULATOR_HOST=url,
             GOOGLE_AUTH_TOKEN_FOR_TESTING="test-token",  # tensorstore and TF, instead of credentials
             HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}", https_proxy=f"http://127.0.0.1:{proxy.port}",
             NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", CURL_CA_BUNDLE=str(ca),
             GCS_RETRY_CONFIG_MAX_RETRIES="1", SPOT_JAX_GCS_TIMEOUT="20")
  yield env, url, proxy
  server.stop()
  proxy.sock.close()


def _objects(url, prefix):
  """Object names under `prefix`, listed by the emulator itself (not through spot_jax's clients)."""
  names, token = [], None
  while True:
    query = {"prefix": prefix, **({"pageToken": token} if token else {})}
    with urllib.request.urlopen(f"{url}/storage/v1/b/bucket/o?{urllib.parse.urlencode(query)}") as r:
      page = json.load(r)
    names += [o["name"] for o in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      return names


def _download(url, name):
  with urllib.request.urlopen(f"{url}/storage/v1/b/bucket/o/{urllib.parse.quote(name, safe='')}?alt=media") as r:
    return r.read()


# One child process: TF's GCS filesystem reads its settings once per process, and pytest's own may
# have met gs:// before. Two runs in it (the second resumes from the bucket), then load_prompt.
_CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
import jax, numpy as np
import tasks.bundled  # noqa: F401
from spot_jax import prompt_io, train
from spot_jax.config import size_config
from spot_jax.model import init_params
config = size_config("tiny", vocab_size=1152, d_model=32, num_heads=2, head_dim=16, d_ff=64)
kw = dict(model_dir="gs://bucket/run", mixture_or_task_name="spot_bundled_movie", batch_size=8,
          task_feature_lengths={"inputs": 32, "targets": 4}, prompt_length=4, save_period=4, log_period=4,
          frozen=(config, init_params(config, jax.random.PRNGKey(0))), enable_dropout=False)
train.train(train_steps=4, **kw)
final = train.train(train_steps=8, **kw)
np.save(sys.argv[1], final)
np.save(sys.argv[2], prompt_io.load_prompt("gs://bucket/run"))
# Eval and infer of that prompt, their outputs on gs:// too.
from spot_jax import eval as eval_lib, infer as infer_lib
data = dict(model_config=config, task_feature_lengths={"inputs": 32, "targets": 4}, batch_size=16)
metrics = eval_lib.evaluate_prompt("spot_bundled_movie", "gs://bucket/eval", "gs://bucket/run",
                                   num_examples=32, **data)
paths = infer_lib.infer_prompt("spot_bundled_movie", "gs://bucket/infer", "gs://bucket/run",
                               num_examples=16, **data)
print("EVAL_INFER " + json.dumps({"metrics": metrics, "paths": paths}, default=float))
# The SPoT pipeline with its MODEL_DIR on gs:// (the library is local: a directory in sys.argv[3]).
from spot_jax.spot import pipeline
from spot_jax.spot.library import PromptLibrary
lib = PromptLibrary(sys.argv[3])
for i, task in enumerate(("spot_bundled_topic", "spot_bundled_product")):
  lib.add(task, np.random.default_rng(i).normal(size=(4, 32)).astype(np.float32), "tiny",
          task_embedding=np.random.default_rng(10 + i).normal(size=(4, 32)).astype(np.float32))
run = pipeline.RunConfig(task_feature_lengths={"inputs": 32, "targets": 4}, batch_size=8, prompt_length=4,
                         eval_batch_size=16, eval_num_examples=16, enable_dropout=False)
result = pipeline.run_target(kw["frozen"], lib, "spot_bundled_movie", "gs://bucket/spot", "weighted_average",
                             top_k=1, steps=2, run=run, task_embedding_steps=1)
print("SPOT " + json.dumps(result.to_dict()["chosen"], default=float))
# A Hugging Face folder on gs://, its tensors read by byte range (TF's GFile seek and read).
import os, tensorflow as tf
from spot_jax.checkpoints import read_params, write_hf
from spot_jax.checkpoints.infer_config import flatten
write_hf(kw["frozen"][1], config, sys.argv[3] + "_hf")
for name in os.listdir(sys.argv[3] + "_hf"):
  tf.io.gfile.copy(os.path.join(sys.argv[3] + "_hf", name), "gs://bucket/hf/" + name, overwrite=True)
lazy, whole = flatten(read_params("gs://bucket/hf", lazy=True)[1]), flatten(read_params(sys.argv[3] + "_hf")[1])
wi = "encoder/layers_0/mlp/wi_0/kernel"
same = all(np.array_equal(np.asarray(lazy[k]), whole[k]) for k in whole)
print("HF " + json.dumps({"same": same, "slice": bool(np.array_equal(lazy[wi][:, 3:7], whole[wi][:, 3:7])),
                          "lazy": type(lazy[wi]).__name__}))
"""


def test_train_resume_and_load_prompt_on_gs(gcs, tmp_path):
  env, url, proxy = gcs
  final, loaded = tmp_path / "final.npy", tmp_path / "loaded.npy"
  out = subprocess.run([sys.executable, "-c", _CHILD, str(final), str(loaded), str(tmp_path / "lib")],
                       cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "resuming from step 4" in out.stderr
  names = _objects(url, "run/")
  for step in (4, 8):
    assert any(n.startswith(f"run/checkpoints/{step}/") for n in names), names
    assert f"run/numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.prompt" in names
  assert any("events.out.tfevents" in n for n in names)
  assert not any(".tmp-" in n for n in names), names
  steps = [json.loads(l)["step"] for l in _download(url, "run/metrics.jsonl").decode().splitlines()]
  assert steps == [4, 8]  # the resumed run appended to the first run's file
  import io
  exported = np.load(io.BytesIO(_download(url, "run/numpy_checkpoints/checkpoint_8/prompt.npy")))
  np.testing.assert_array_equal(np.load(final), exported)
  np.testing.assert_array_equal(np.load(loaded), exported)  # load_prompt("gs://bucket/run"): the latest
  assert {"www.googleapis.com:443", "storage.googleapis.com:443"} <= proxy.hosts  # TF's GCS client was used
  done = json.loads(out.stdout.split("EVAL_INFER ", 1)[1].splitlines()[0])
  assert "accuracy" in done["metrics"]["spot_bundled_movie"]
  assert done["paths"]["spot_bundled_movie"] == "gs://bucket/infer/spot_bundled_movie-validation.jsonl"
  predictions = _download(url, "infer/spot_bundled_movie-validation.jsonl").decode().splitlines()
  assert len(predictions) == 16 and {"inputs", "prediction", "targets"} <= set(json.loads(predictions[0]))
  logged = [json.loads(l) for l in _download(url, "eval/metrics.jsonl").decode().splitlines()]
  assert logged[-1]["step"] == 8 and "eval/spot_bundled_movie/accuracy" in logged[-1]  # the export's step
  assert any(n.startswith("eval/spot_bundled_movie-") for n in _objects(url, "eval/"))  # seqio's JSON logs
  spot = set(_objects(url, "spot/"))
  assert {"spot/result.json", "spot/init.npy", "spot/transfer/numpy_checkpoints/checkpoint_2/prompt.npy",
          "spot/task_embedding/numpy_checkpoints/task_embedding/prompt.npy"} <= spot, sorted(spot)
  chosen = json.loads(_download(url, "spot/result.json"))["chosen"]
  assert len(chosen) == 1 and chosen[0]["task"] in ("spot_bundled_topic", "spot_bundled_product")
  hf_read = json.loads(out.stdout.split("HF ", 1)[1].splitlines()[0])
  assert hf_read == {"same": True, "slice": True, "lazy": "LazyArray"}
  assert not os.path.exists(os.path.join(REPO, "gs:"))  # no local directory named after the URL


# A Hugging Face folder on gs:// whose `wo` rows are 1 KiB (HF [d_model=8, d_ff=256] float32), and a
# `mlp` shard of 1/8 of it (T5X rows 32..64, HF columns 32..64: 128 bytes of each row), read three ways.
_HF_CHILD = """
import json, os, sys
import numpy as np
import tensorflow as tf
from spot_jax.checkpoints import read_params, write_hf
from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten
from spot_jax.config import T5Config
config = T5Config(vocab_size=16, d_model=8, num_heads=2, head_dim=4, d_ff=256, num_encoder_layers=1,
                  num_decoder_layers=1, relative_attention_num_buckets=4, dropout_rate=0.0)
rng = np.random.default_rng(0)
write_hf(unflatten({n: rng.standard_normal(s).astype(np.float32) for n, s in expected_shapes(config).items()}),
         config, sys.argv[1])
for name in os.listdir(sys.argv[1]):
  tf.io.gfile.copy(os.path.join(sys.argv[1], name), "gs://bucket/hf/" + name, overwrite=True)
wo = "encoder/layers_0/mlp/wo/kernel"
lazy, eager = flatten(read_params("gs://bucket/hf", lazy=True)[1])[wo], flatten(read_params(sys.argv[1])[1])[wo]
same = [np.array_equal(lazy[32:64], eager[32:64])]            # the default gap rule: one range
os.environ["SPOT_JAX_GCS_MAX_GAP_BYTES"] = "0"
same.append(np.array_equal(lazy[32:64], eager[32:64]))        # one range per row
same.append(np.array_equal(np.asarray(lazy), eager))          # the whole tensor
print("HF_COLUMNS " + json.dumps({"same": same, "hf_shape": list(lazy.shape[::-1])}))
"""


def test_a_column_slice_of_a_gs_safetensors_reads_only_its_bytes(gcs, tmp_path):
  """What the emulator sent for the slices of one tensor, counted at the server: through TF's GCS
  client each seek read a 64 MiB window (here: to the end of the file), so a slice of a few rows, and
  the header, each cost a whole download of the file; a column slice was read as the whole tensor."""
  env, url, _ = gcs
  del SERVED[:]
  out = subprocess.run([sys.executable, "-c", _HF_CHILD, str(tmp_path / "hf")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  done = json.loads(out.stdout.split("HF_COLUMNS ", 1)[1].splitlines()[0])
  assert done == {"same": [True, True, True], "hf_shape": [8, 256]}
  sent = [n for name, _, n in SERVED if name == "hf/model.safetensors"]
  file_size = (tmp_path / "hf" / "model.safetensors").stat().st_size
  header = int.from_bytes((tmp_path / "hf" / "model.safetensors").read_bytes()[:8], "little")
  row, rows, piece = 256 * 4, 8, 32 * 4
  assert sent[:2] == [8, header]  # the header: its length, then the JSON
  assert sent[2] == (rows - 1) * row + piece  # default: one range from the slice's first byte to its last
  assert sorted(sent[3:3 + rows]) == [piece] * rows  # SPOT_JAX_GCS_MAX_GAP_BYTES=0: a range per row
  assert sent[3 + rows:] == [rows * row]  # the whole tensor: one range
  assert sum(sent[3:3 + rows]) == rows * row // 8 and sent[2] < rows * row < file_size


_CHILD_RERUN = """
import json, logging, sys
from spot_jax import fileio, infer
path = "gs://bucket/rerun/t-validation.jsonl"
out = [infer.write_jsonl(path, [{"prediction": "a"}]),
       infer.write_jsonl(path, [{"prediction": "a"}]),  # the same bytes: nothing written
       infer.write_jsonl(path, [{"prediction": "b"}])]
print("RERUN " + json.dumps(out))
"""


def test_infer_predictions_rerun_on_gs_keeps_the_earlier_file(gcs, tmp_path):
  """infer's predictions file on gs://: a rerun with other predictions keeps the earlier object as
  `<file>.old-<id>` through TensorFlow's GCS client, as on disk."""
  import hashlib
  env, url, proxy = gcs
  out = subprocess.run([sys.executable, "-c", _CHILD_RERUN], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  digest = hashlib.sha256(b'{"prediction": "a"}\n').hexdigest()[:8]
  backup = f"gs://bucket/rerun/t-validation.jsonl.old-{digest}"
  assert json.loads(out.stdout.split("RERUN ", 1)[1].splitlines()[0]) == [[True, None], [False, None],
                                                                          [True, backup]]
  objects = sorted(n for n in _objects(url, "rerun/") if not n.endswith("/"))  # not makedirs' marker
  assert objects == ["rerun/t-validation.jsonl", f"rerun/t-validation.jsonl.old-{digest}"], objects
  assert _download(url, "rerun/t-validation.jsonl") == b'{"prediction": "b"}\n'
  assert _download(url, f"rerun/t-validation.jsonl.old-{digest}") == b'{"prediction": "a"}\n'
  assert {"www.googleapis.com:443", "storage.googleapis.com:443"} & proxy.hosts  # TF's GCS client was used
