"""Shared fixtures: the local stand-ins for the Hub (skipped with a reason when missing), tiny from-config models, and
helpers that run train.py as a user would: in this process (one process: seconds), as N processes forked from this one
(ForkedTrain: training under N processes), or under `accelerate launch` with N CPU processes (where the launcher or the
processes themselves are under test)."""

import contextlib
import gc
import io
import json
import logging
import os
import random
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from unittest import mock

# No Hub: fail at once instead of retrying for ~25 s (read when huggingface_hub is first imported, so set it here).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

tqdm.monitor_interval = 0  # no monitor thread: a fork (ForkedTrain) could copy its lock held

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMDB_DIR = Path(os.environ.get("TEST_IMDB_DIR", SHARED / "data" / "imdb"))
MINILM_DIR = Path(os.environ.get("TEST_MINILM_DIR", SHARED / "models" / "all-MiniLM-L6-v2"))
GPT2_TOKENIZER_DIR = Path(os.environ.get("TEST_GPT2_TOKENIZER_DIR", SHARED / "models" / "gpt2-tokenizer"))


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test asset missing: {path} (set TEST_IMDB_DIR / TEST_MINILM_DIR / TEST_GPT2_TOKENIZER_DIR)")
    return path


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    return require(IMDB_DIR)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return require(MINILM_DIR)


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    return require(GPT2_TOKENIZER_DIR)


@pytest.fixture(scope="session")
def small_imdb(imdb_dir, tmp_path_factory) -> Path:
    """A directory `imdb` (so its 0/1 labels are IMDB's neg/pos) with train.parquet (64 rows) and test.parquet (101
    rows) of IMDB, both classes mixed."""
    out = tmp_path_factory.mktemp("small") / "imdb"
    out.mkdir()
    for split, rows in (("train", 64), ("test", 101)):
        frame = pd.read_parquet(imdb_dir / f"{split}.parquet").sample(n=rows, random_state=0)
        frame.reset_index(drop=True).to_parquet(out / f"{split}.parquet")
    return out


def save_tiny(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(minilm_dir, tmp_path_factory) -> Path:
    """A 2-layer BERT (dropout off, so runs are comparable step by step) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return save_tiny(BertForSequenceClassification(config), tokenizer, tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_bert_dropout(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT with dropout on: an exact resume must restore the RNG too, and gradient checkpointing replay it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_bert)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, config=config)
    return save_tiny(model, AutoTokenizer.from_pretrained(tiny_bert), tmp_path_factory.mktemp("tiny_bert_dropout"))


@pytest.fixture(scope="session")
def tiny_gpt2(gpt2_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with the real GPT-2 tokenizer, which has no pad token."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return save_tiny(GPT2ForSequenceClassification(config), tokenizer, tmp_path_factory.mktemp("tiny_gpt2"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_train(args: list, processes: int = 1, use_cpu_group: bool = True, check: bool = True,
              report_png: bool = False):
    """Run train.py: in this process, or under `accelerate launch` when processes > 1; fail loudly with its output
    when it fails. In this process report.png is drawn only with `report_png` (matplotlib takes 0.25 s a picture, a
    sixth of a tiny run: ~30 s of the suite): tests/test_report.py checks pictures of each kind; a usability run, each
    kind's run in test_tasks.py, a resumed run and the fine-tune draw theirs."""
    if processes == 1:
        result = _train_here(args, report_png)
    else:
        result = finish_launch(launch_train(args, processes, use_cpu_group))
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _train_here(args: list, report_png: bool = False) -> subprocess.CompletedProcess:
    import train
    import training.outputs

    with contextlib.ExitStack() as stack:
        if not report_png:
            stack.enter_context(mock.patch.object(training.outputs, "write_picture", lambda *args: False))
        return run_in_process(train, args)


def launch_train(args: list, processes: int, use_cpu_group: bool = True) -> subprocess.Popen:
    """`accelerate launch --multi_gpu --num_processes N train.py ARGS`, started (launches started together run side
    by side: most of their seconds are imports and compiling, one core each)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port()),
               str(ROOT / "train.py")]
    if use_cpu_group:
        env["ACCELERATE_USE_CPU"] = "1"  # gloo on the CPU: without it each process trains alone
    return subprocess.Popen(command + [str(a) for a in args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class ForkedTrain:
    """What `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N --num_cpu_threads_per_process 1
    train.py ARGS` runs, as N processes forked from this one: the same gloo group, ranks and one thread each, without
    each process importing torch and transformers again (~4 s a process, and the launcher's ~1 s). For tests of
    training under N processes; tests of the launcher, of a process's signals or of its exit start the real one
    (launch_train): a forked rank leaves with os._exit, skipping the interpreter's shutdown. Eager runs on the CPU only:
    a fork takes neither this process's compile workers nor an initialized CUDA along. Started at once; finish_launch
    waits. If a rank fails, the others get GRACE_SECONDS to finish, then are killed (as the launcher stops them)."""

    GRACE_SECONDS = 10

    def __init__(self, args: list, processes: int):
        self.args = [str(arg) for arg in args]
        assert "--torch_compile" not in self.args and not torch.cuda.is_initialized(), "use launch_train"
        self.returncode = None
        port = str(_free_port())
        self._children = {}  # pid: the file its stdout and stderr come back in
        for rank in range(processes):
            output = tempfile.TemporaryFile()
            pid = os.fork()
            if pid == 0:
                self._run_rank(rank, processes, port, output)
            self._children[pid] = output

    def _run_rank(self, rank: int, processes: int, port: str, output) -> None:
        code, result = 1, None
        try:
            os.environ.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes),
                              LOCAL_WORLD_SIZE=str(processes))
            os.environ.pop("ACCELERATE_DYNAMO_BACKEND", None)  # the launcher's (under_accelerate_launch)
            torch.set_num_threads(1)  # the launcher's one thread; OpenMP's pool does not survive a fork
            random.seed(), np.random.seed(), torch.seed()  # a new process's own random states, not this one's copy
            result = _train_here(self.args)
            code = result.returncode
        except BaseException:  # noqa: BLE001 - whatever happens, say it and leave
            result = subprocess.CompletedProcess(self.args, 1, "", traceback.format_exc())
        finally:
            if result is not None:
                output.write(json.dumps([result.stdout, result.stderr]).encode())
                output.flush()
            os._exit(code)  # not this process's exit handlers (pytest's)

    def communicate(self, timeout: float) -> tuple[str, str]:
        deadline, codes, left = time.time() + timeout, {}, set(self._children)
        while left and time.time() < deadline:
            for pid in list(left):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
                    left.discard(pid)
                    if codes[pid] != 0:
                        deadline = min(deadline, time.time() + self.GRACE_SECONDS)
            time.sleep(0.01)
        for pid in left:  # still running at the deadline: killed and reaped
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes[pid] = -signal.SIGKILL
        stdout = stderr = ""
        for pid, output in self._children.items():
            output.seek(0)
            printed = output.read()
            out, err = json.loads(printed) if printed else ("", f"(rank pid {pid}: no output, exit code {codes[pid]})")
            stdout, stderr = stdout + out, stderr + err
        if left and all(code in (0, -signal.SIGKILL) for code in codes.values()):
            raise subprocess.TimeoutExpired(self.args, timeout, stdout, stderr)
        self.returncode = next((code for code in codes.values() if code != 0), 0)
        return stdout, stderr


def finish_launch(process: subprocess.Popen | ForkedTrain, check: bool = False) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}")
    return result


def kill_after_checkpoint(args: list, output_dir: Path, checkpoint: str) -> list[str]:
    """`python train.py ARGS --output_dir DIR`, SIGKILLed as soon as checkpoints/CHECKPOINT is complete (as a preempted
    job dies); the checkpoints it left, oldest first."""
    from training.checkpoints import list_checkpoints

    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args), "--output_dir", str(output_dir)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (output_dir / "checkpoints" / checkpoint).is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (output_dir / "metrics.json").exists()
    return [path.name for path in list_checkpoints(output_dir)]


def run_in_process(module, args: list, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python train.py ARGS` (or predict.py) without a new process: the module's main in this one, with stdin, stdout
    and stderr captured and the exit code a process would have (a SystemExit message goes to stderr with code 1; an
    uncaught exception prints its traceback, code 1). Accelerate's process-wide state is reset first, as in a new
    process. Seconds instead of the ~5 s a fresh interpreter spends importing torch and transformers."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    args = [str(arg) for arg in args]
    return _as_a_process(lambda: module.main(module.parse_args(args)), args, stdin)


def run_module(name: str, args: list) -> subprocess.CompletedProcess:
    """`python -m NAME ARGS` in this process: the module run as `__main__` (runpy, as -m runs it), with what it prints
    and the exit code a process would have."""
    args = [str(arg) for arg in args]
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # a __main__ block's logging.basicConfig: undone after
    try:
        with mock.patch.object(sys, "argv", [name, *args]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*found in sys.modules", RuntimeWarning)  # runpy: the tests imported it
            return _as_a_process(lambda: runpy.run_module(name, run_name="__main__"), args)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _as_a_process(main, args: list, stdin: str | None = None) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _stdin(stdin):
        try:
            main()
        except SystemExit as stop:
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
                code = 1
            else:
                code = stop.code or 0
        except Exception:  # noqa: BLE001 - as the interpreter would: the traceback, exit code 1
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _stdin(text: str | None):
    saved = sys.stdin
    sys.stdin = io.StringIO(text or "")
    try:
        yield
    finally:
        sys.stdin = saved


def read_outputs(output_dir: Path):
    """(metrics.json as a dict, log.jsonl as a list of dicts)."""
    metrics = json.loads((output_dir / "metrics.json").read_text())
    log = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return metrics, log


def pytest_collection_finish(session):
    # The test modules have imported torch, transformers, datasets...: millions of objects that live as long as the
    # process. Frozen, the garbage collector stops walking them on every full collection (test_tasks, test_checkpoints,
    # test_train and test_architectures: 12.6 s of collecting, 4.4 s frozen).
    gc.freeze()
