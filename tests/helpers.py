"""Helpers the tests share: paths, small configs, free ports, MLflow histories, an `mlflow server`, a relay, sweeps."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from gptray.core.runtime import free_port  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "corpora" / "tinyshakespeare.txt"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def interruptible_command(args: list[str], log_path: Path, **popen_args):
    """A `gptray` command in its own session that Ctrl-C (SIGINT) reaches as it reaches a user's: SIGINT is
    set back to its default in the child, because a shell that runs the suite as a background job starts
    it with SIGINT ignored and Python keeps an inherited SIG_IGN (the command then trained on, ignoring the
    test's signal, for 20 minutes of the suite). Whatever still runs in its session when the block ends is
    killed."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_default_sigint, **popen_args)
        try:
            yield process
        finally:
            # The whole session, even after the command exited: a local Ray it started (its GCS, raylet,
            # workers) can outlive it there, and a second Ray instance on the machine stalls the Ray Train
            # runs of the tests after this one (the PlacementGroupCleaner's state API calls).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_dashboard(url: str, process, log_path: Path, timeout: float = 90) -> None:
    """Wait until a Ray head started by `process` answers on its dashboard (a 401 asking for the token
    counts as up); fail with the end of its log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start:\n{Path(log_path).read_text()[-3000:]}") from None
            time.sleep(0.5)


def make_config(root: Path, *overrides: str):
    """A resolved config whose outputs all live under `root` (a fine-tuning one reads its base), in GPT-2's
    vocabulary (tiktoken's, nothing to learn first) unless `overrides` name another data.tokenizer."""
    from gptray.train.finetune import load_run_config

    return load_run_config(None, [f"out_dir={root}/runs", f"data.dataset_dir={root}/data", GPT2_TOKENIZER,
                                       *overrides])


GPT2_TOKENIZER = "data.tokenizer=gpt2"  # the built-in default is a BPE learned from the corpus


# A small model and short schedule for Ray Train tests; 2 workers × 2 micro-batches of 2 also
# exercise gradient accumulation.
SMALL_RUN = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=64",
    "train.batch_size=8", "train.micro_batch_size=2", "optimizer.lr=3e-3", "schedule.warmup_steps=4",
    "schedule.decay_steps=36",  # the schedule must not depend on max_steps for resume to be exact
    "train.log_interval=1", "train.eval_interval=12", "train.eval_windows=15", "checkpoint.interval=12",
    "generate.max_new_tokens=20",
]


def small_run_config(root: Path, dataset, *overrides: str):
    """SMALL_RUN on a tokenized dataset, outputs under `root`."""
    return make_config(root, *SMALL_RUN, f"data.dataset_dir={dataset.dataset_dir}", *overrides)


class PretrainInThread:
    """pretrain(config) in a thread of its own, for tests that act on a run while it trains (kill a worker,
    take the tracking server away): `wait_for_checkpoint(step)`, then `join()` for its result or error."""

    def __init__(self, config, **pretrain_args):
        from gptray.train.pretrain import pretrain

        self.config, self.result, self.error = config, None, None

        def run() -> None:
            try:
                self.result = pretrain(config, **pretrain_args)
            except Exception as exc:  # reported by the test through join() or .error
                self.error = exc

        self.thread = threading.Thread(target=run, name=f"pretrain-{config.name}")
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def wait_for_checkpoint(self, step: int, timeout: float = 300) -> None:
        """Until the run's checkpoint at `step` is complete (its state.json is written last)."""
        state = Path(self.config.run_dir) / f"checkpoint_{step:08d}" / "state.json"
        deadline = time.monotonic() + timeout
        while not state.exists():
            assert self.thread.is_alive(), f"the run ended before checkpoint {step}: {self.error!r}"
            assert time.monotonic() < deadline, f"no checkpoint {step} within {timeout:g} s"
            time.sleep(0.1)

    def join(self, timeout: float = 300):
        """The run's PretrainResult once it ends (its error raised again)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the run is still training after {timeout:g} s"
        if self.error is not None:
            raise self.error
        return self.result


def metric_history(result, key: str) -> dict[int, float]:
    """step → value of an MLflow metric of a pretrain result (the last value where a step repeats)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    history = sorted(client.get_metric_history(result.mlflow_run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


BIN = Path(sys.executable).parent


class MlflowServer:
    """`mlflow server` with a SQLite backend and a local artifact store, started and stopped at will."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> None:
        log = open(self.root / "server.log", "a")
        # MLflow 3's server also starts a job runner (8 more processes) for its GenAI jobs, which gptray never
        # submits: without it the server is up in ~7 s instead of 11-25 s on 2 busy cores.
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, \
                    (self.root / "server.log").read_text()[-3000:]
                time.sleep(0.5)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # the server and its workers, no goodbye
        self.process.wait()


class Relay:
    """A TCP relay on its own loopback port in front of a server: `down()` refuses connections and cuts
    open ones, as a dead server does, and `up()` is the server back at once, however long a real
    `mlflow server` would take to start on a loaded machine.

    With `delay`, every request waits that long before it goes on to the server: what arrives from the
    client within the wait (an HTTP request's headers and body) goes on together, so one request costs
    one delay, as network latency would.
    """

    def __init__(self, target_port: int, delay: float = 0.0):
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self.accepted = 0
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        self.up()
        self.uri = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # the same address again
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.1)  # a blocked accept() would keep a closed listener alive
        self.serving = True
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def down(self) -> None:
        self.serving = False
        self.acceptor.join()
        self.listener.close()
        with self.lock:
            for s in self.open:
                cut(s)
                s.close()
            self.open = []

    def _accept(self) -> None:
        while self.serving:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is away too: this client sees its connection end, the relay goes on
                client.close()
                continue
            with self.lock:
                self.accepted += 1
                self.open += [client, upstream]
            for a, b, delay in ((client, upstream, self.delay), (upstream, client, 0.0)):
                threading.Thread(target=self._pump, args=(a, b, delay), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(65536):
                if delay:
                    time.sleep(delay)
                    data += _arrived(source)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            cut(source)
            cut(sink)


def _arrived(source: socket.socket) -> bytes:
    """What has already arrived on `source`, read without waiting (a closed end shows at the next recv)."""
    chunks = []
    while True:
        try:
            chunk = source.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def cut(connection: socket.socket) -> None:
    """End a relayed connection in both directions (the peer sees it closed)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # already cut
        pass


TINY_TRIALS = {
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 64},
    "train": {"max_steps": 4, "batch_size": 4, "micro_batch_size": 4, "eval_interval": 2, "eval_windows": 8,
              "log_interval": 1},
    "schedule": {"warmup_steps": 1},
    "checkpoint": {"interval": 2},
    "ray": {"num_workers": 1, "num_cpus": 4},  # num_cpus: a sweep started from the CLI gets its own local Ray
}


def write_sweep(path: Path, dataset_dir: str, sweep: dict, **sections) -> Path:
    data = {"dataset_dir": dataset_dir, "tokenizer": "gpt2"}  # the shared test datasets are GPT-2 tokens
    content = {"name": path.stem, "out_dir": str(path.parent / "runs"), "data": data,
               **TINY_TRIALS, **sections, "sweep": sweep}
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path
