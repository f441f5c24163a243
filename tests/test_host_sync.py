"""No host sync in the training step (issue 19 item 3): training steps, evaluations and a predict.py batch run under an
audit that records every operation reading a tensor's values on the host, with the op and the innermost line of this
repository or of transformers that asked for it (and the repository line that called into transformers).

What counts as a read (on a GPU each one waits for the device):
- dispatch level (`TorchDispatchMode`, sees every aten op eager code runs): `_local_scalar_dense` (`.item()`, `if t:`,
  `int(t)`), `nonzero`, `is_nonzero`, `equal`, `masked_select`, `unique`, `repeat_interleave` without `output_size`,
  `bincount`, and copies from a non-CPU device to the CPU;
- function level (`TorchFunctionMode`, eager runs only): `.cpu()`, `.tolist()`, `.numpy()` -- on this CPU-only machine
  they dispatch nothing, but on a GPU each is a copy to the host.
Left out, as code that only ever holds host tensors, on a GPU too: the DataLoader's machinery (its base seed, an
`.item()` of a tensor drawn from its CPU generator each time a loader is iterated) and data/sampling.py (the epoch's
batch plan: row indices cut with CPU generators). Consecutive reads with no operation between them make one sync point:
only the first waits for the device.

Each read is put in a phase by the functions on its stack (PHASES: the innermost match; names in train.py and
training/telemetry.py, so a rename there shows up here as reads in "setup" or "step"), and after a batch: a global
module hook numbers each phase's classifier forwards. The checks: no read at all in the training step between the
loop's sync points (logging steps, the NaN check there and at the epoch's end); at most one sync point after each
evaluation or predict batch (its results), plus a few after an evaluation's last batch (its metrics).

Compiled code: a dispatch mode makes dynamo fall back to eager unless the mode ignores compile internals; the audit
does, so in a compiled run it sees everything that runs eagerly (the loop, the mask hook, any graph break's eager code)
but not the inside of a compiled graph. The compiled run therefore also checks that the forward compiled whole (no graph
break) with dynamo's defaults, under which a data-dependent op (`.item()`, `nonzero`) breaks the graph rather than
entering it: no graph break means no read inside the graphs.
"""

import collections
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForSequenceClassification

import train
from conftest import read_outputs, run_train

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TRANSFORMERS = Path(transformers.__file__).resolve().parent
# Code that only ever holds host tensors: the DataLoader's machinery, and the data layer's sampling (row indices cut
# with CPU generators, `.tolist()` of CPU tensors), which runs before a batch is built.
HOST_SIDE = (Path(torch.utils.data.__file__).resolve().parent, ROOT / "data" / "sampling.py")

aten = torch.ops.aten
# Ops whose result depends on tensor values the host must have: a scalar, or an output size.
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.is_nonzero, aten.equal, aten.masked_select, aten._unique,
            aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.bincount}
COPIES = {aten._to_copy, aten.copy_, aten._copy_from}
READ_METHODS = {"cpu", "tolist", "numpy"}
# The phase of a read: the innermost of these functions on its stack (file relative to the repository, function name).
PHASES = [
    ("train.py", "evaluate", "eval"),
    ("predict.py", "predict", "predict"),
    ("train.py", "stop_if_not_finite", "nan-check"),
    ("training/telemetry.py", "step_done", "logging"),
    ("training/telemetry.py", "close", "finish"),
    ("train.py", "save_and_prune", "checkpoint"),
    ("train.py", "end_of_epoch", "epoch-end"),
    ("train.py", "finish", "finish"),
    ("train.py", "train_epoch", "step"),  # anything else inside the epoch's loop: a read in the step
]


@dataclasses.dataclass
class Read:
    op: str
    where: str  # file:line of the innermost frame of this repository or of transformers
    caller: str | None  # file:line of the innermost frame of this repository, when `where` is in transformers
    phase: str
    sync_point: int  # reads with the same number had no operation between them
    batch: int  # the classifier forwards of its phase so far: a read after batch n's forward, before n + 1's

    def __str__(self):
        called = f", called from {self.caller}" if self.caller else ""
        return f"{self.op} at {self.where} ({self.phase}{called})"


def _relative(filename: str) -> tuple[str, str] | None:
    """('repo' or 'transformers', path inside it) for a frame worth naming; None for torch, accelerate, tests..."""
    path = Path(filename)
    if path.is_relative_to(TRANSFORMERS):
        return "transformers", "transformers/" + path.relative_to(TRANSFORMERS).as_posix()
    if path.is_relative_to(ROOT) and not path.is_relative_to(TESTS) and ".venv" not in path.parts:
        return "repo", path.relative_to(ROOT).as_posix()
    return None


class HostReads:
    """Records host reads while active (see the module's docstring), and numbers the classifier forwards of each phase
    (a global module hook), so that a read can be put after its batch. `compiled=True`: the dispatch level only, so
    dynamo compiles as it would without the audit."""

    def __init__(self, compiled: bool = False):
        self.reads: list[Read] = []
        self.left_out: list[str] = []  # host-side reads (HOST_SIDE)
        self.forwards = collections.Counter()  # classifier forwards per phase
        self.compiled = compiled
        self._ops = 0  # operations dispatched so far: a new value between two reads makes a new sync point
        self._last_ops = 0
        self._depth = 0  # > 0 inside a function-level read (its own dispatches are not counted again)
        self._modes = [_DispatchAudit(self)] + ([] if compiled else [_FunctionAudit(self)])
        self._hook = None

    def __enter__(self):
        self._hook = torch.nn.modules.module.register_module_forward_pre_hook(self._forward)
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._hook.remove()

    def _forward(self, module, args) -> None:
        if type(module).__name__.endswith("ForSequenceClassification"):
            self.forwards[_locate(sys._getframe(1))[2]] += 1

    def record(self, op: str) -> None:
        where, caller, phase, host_side = _locate(sys._getframe(2))
        if host_side:
            self.left_out.append(f"{op} at {where}")
            return
        if not self.reads:
            sync_point = 0
        else:
            sync_point = self.reads[-1].sync_point + (self._ops != self._last_ops)
        self._last_ops = self._ops
        self.reads.append(Read(op, where or "?", caller if caller != where else None, phase, sync_point,
                               self.forwards[phase]))

    def by_phase(self) -> dict[str, list[Read]]:
        phases = collections.defaultdict(list)
        for read in self.reads:
            phases[read.phase].append(read)
        return phases

    def sync_points(self, phase: str) -> int:
        return len({read.sync_point for read in self.reads if read.phase == phase})

    def sync_points_after_each_batch(self, phase: str) -> dict[int, int]:
        """Batch n (1-based, counted over the phase's rounds) -> sync points between its forward and the next one."""
        points = collections.defaultdict(set)
        for read in self.reads:
            if read.phase == phase:
                points[read.batch].add(read.sync_point)
        return {batch: len(points[batch]) for batch in range(self.forwards[phase] + 1)}


def _locate(frame) -> tuple[str | None, str | None, str, bool]:
    """(where, caller, phase, host_side) of the code running in `frame` and its callers."""
    where, caller, phase, host_side = None, None, None, False
    while frame is not None:
        filename = frame.f_code.co_filename
        if any(Path(filename).is_relative_to(host) for host in HOST_SIDE):
            host_side = True
        named = _relative(filename)
        if named and where is None:
            where = f"{named[1]}:{frame.f_lineno}"
        if named and named[0] == "repo" and caller is None:
            caller = f"{named[1]}:{frame.f_lineno}"
        if named and named[0] == "repo" and phase is None:
            phase = next((p for file, function, p in PHASES
                          if named[1] == file and frame.f_code.co_name == function), None)
        frame = frame.f_back
    return where, caller, phase or "setup", host_side


class _DispatchAudit(TorchDispatchMode):
    def __init__(self, audit: HostReads):
        super().__init__()
        self.audit = audit

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True  # compiled graphs run compiled (not eagerly, as dynamo would do for a mode that sees their ops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if self.audit._depth == 0:
            # repeat_interleave(repeats) must know repeats.sum() for its output's size, unless it is given
            if packet in SYNC_OPS or (func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None):
                self.audit.record(str(packet).removeprefix("aten."))
            elif packet in COPIES and _device_to_host(packet, args, kwargs):
                self.audit.record("copy to the host")
            else:
                self.audit._ops += 1
        return func(*args, **kwargs)


def _device_to_host(packet, args, kwargs) -> bool:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if packet is aten._to_copy:
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and tensors[0].device.type != "cpu"
    destination, source = tensors[0], tensors[1]  # copy_(self, src), _copy_from(self, dst): either way one is CPU
    if packet is aten._copy_from:
        destination, source = source, destination
    return destination.device.type == "cpu" and source.device.type != "cpu"


class _FunctionAudit(TorchFunctionMode):
    def __init__(self, audit: HostReads):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READ_METHODS and args and isinstance(args[0], torch.Tensor):
            self.audit.record(f".{name}()")
            self.audit._depth += 1
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.audit._depth -= 1
        return func(*args, **(kwargs or {}))


# ---- The runs under audit ----

# 62 rows of up to 256 tokens in 16 steps of 4 (the last of 2), logging every 5th step and the last; 21 eval rows in
# batches of 8, 8 and 5: many lengths and short last batches, which the compiled run takes in one graph each.
TRAIN_ROWS, BATCH, EVAL_ROWS, EVAL_BATCH, LOGGING_STEPS = 62, 4, 21, 8, 5
STEPS = -(-TRAIN_ROWS // BATCH)
EVAL_BATCHES = -(-EVAL_ROWS // EVAL_BATCH)
# evaluate() keeps each batch's gathered results on the device and reads them after its last batch: four copies to
# the host, then two .numpy() and one .item() of tensors already there (none of those three waits for a GPU).
EVAL_END_SYNC_POINTS = 7
LOGGING_STEP_COUNT = len(range(LOGGING_STEPS, STEPS + 1, LOGGING_STEPS)) + (STEPS % LOGGING_STEPS != 0)  # + the last


def audited_args(model_dir, data_dir) -> list:
    """train.py's arguments for the runs under audit, less --output_dir and --torch_compile."""
    return ["--model_name_or_path", model_dir, "--dataset_name", data_dir, "--train_samples", TRAIN_ROWS,
            "--eval_samples", EVAL_ROWS, "--per_device_train_batch_size", BATCH, "--per_device_eval_batch_size",
            EVAL_BATCH, "--max_length", 256, "--num_train_epochs", 1, "--logging_steps", LOGGING_STEPS,
            "--learning_rate", 1e-3]


def audited_run(model_dir, data_dir, output_dir, compiled: bool = False) -> tuple[HostReads, int]:
    """train.py in this process, an evaluation before training and one at the end; every host read recorded. Returns
    the audit and the number of evaluations."""
    evaluations = []
    real_evaluate = train.evaluate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "evaluate", lambda *args, **kwargs: evaluations.append(1) or real_evaluate(*args, **kwargs))
        with HostReads(compiled=compiled) as audit:
            run_train(audited_args(model_dir, data_dir) + ["--output_dir", output_dir,
                                                            "--torch_compile" if compiled else "--no-torch_compile"])
    return audit, len(evaluations)


def listing(reads) -> str:
    counts = collections.Counter(str(read) for read in reads)
    return "\n".join(f"  {n} x {read}" for read, n in counts.most_common())


def check_once_per_batch(audit: HostReads, phase: str, batches: int, end_sync_points: int, per_batch: int = 1) -> None:
    """At most `per_batch` sync points after each batch's forward (its results), and `end_sync_points` more after a
    round's last batch; none before the first forward."""
    for batch, points in audit.sync_points_after_each_batch(phase).items():
        allowed = 0 if batch == 0 else per_batch + (end_sync_points if batch % batches == 0 else 0)
        reads = [read for read in audit.by_phase()[phase] if read.batch == batch]
        assert points <= allowed, f"{phase}: {points} sync points after batch {batch} of {batches}:\n{listing(reads)}"


def check_run(audit: HostReads, evaluations: int) -> None:
    phases = audit.by_phase()
    assert audit.forwards["step"] == STEPS  # the hook sees every forward (and puts each read after its batch)
    assert not phases["step"], f"the training step reads from the device:\n{listing(phases['step'])}"
    # The loop's own sync points: one reduce per logging step, the NaN flag there and at the epoch's end.
    logging = audit.sync_points("logging")  # compiled (no function level): its .tolist() of a CPU tensor is not seen
    assert logging == LOGGING_STEP_COUNT or (audit.compiled and logging == 0), listing(phases["logging"])
    assert audit.sync_points("nan-check") == LOGGING_STEP_COUNT + 1, listing(phases["nan-check"])
    assert evaluations == 2 and audit.forwards["eval"] == evaluations * EVAL_BATCHES  # before training, after the last
    check_once_per_batch(audit, "eval", EVAL_BATCHES, EVAL_END_SYNC_POINTS, per_batch=0)  # all at the end


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_gpt2"])
def test_the_eager_step_reads_nothing_and_evaluation_once_per_batch(model, request, small_imdb, tmp_path):
    audit, evaluations = audited_run(request.getfixturevalue(model), small_imdb, tmp_path / "out")
    check_run(audit, evaluations)


# Eager predict: batches of 2, 2 and 1. The compiled one takes all six: batches of 2, whose one graph is the training
# run's evaluation graph, from the compile cache (a batch of 1 is a graph of its own, as 1 is a size dynamo
# specializes on: 5 s more on a machine that has never compiled).
TEXTS = ["A wonderful film.", "Dull, and far too long for what it had to say about anything at all.", "Fine.",
         "The cast is good but the script wanders.", "No.", "Two hours I will not get back."]


def classifier_and_tokenizer(model_dir):
    from model import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))  # GPT-2: pads with eos
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    model.config.pad_token_id = tokenizer.pad_token_id  # as train.py saves it
    return model, tokenizer


def check_predict(model, tokenizer, texts: list[str], compiled: bool = False) -> torch.Tensor:
    """predict.predict() as predict.py's main runs it: the masks prepared when eager, the model compiled otherwise."""
    import predict
    from model import prepare_attention_masks

    masks = None if compiled else prepare_attention_masks(model)
    with HostReads(compiled=compiled) as audit:
        probabilities = predict.predict(model, tokenizer, texts, batch_size=2, max_length=16)
    if masks is not None:
        masks.remove()
    batches = -(-len(texts) // 2)
    reads = audit.by_phase()["predict"]
    assert audit.forwards["predict"] == batches
    check_once_per_batch(audit, "predict", batches, end_sync_points=0)
    if not compiled:  # the one read per batch: its probabilities, copied to the host
        copy_line = _line_of(predict, "scores[rows] = task.scores(model(**batch).logits).cpu()")
        assert {(read.op, read.where) for read in reads} == {(".cpu()", f"predict.py:{copy_line}")}, listing(reads)
    return probabilities


def _line_of(module, text: str) -> int:
    lines = Path(module.__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_gpt2"])
def test_predict_reads_once_per_batch(model, request):
    check_predict(*classifier_and_tokenizer(request.getfixturevalue(model)), TEXTS[:5])


def test_the_audit_names_the_op_and_the_line_of_a_read(tiny_bert):
    """The control: transformers' own mask path (no prepared mask) reads the mask in every forward, and the audit
    says where."""
    model, tokenizer = classifier_and_tokenizer(tiny_bert)
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with HostReads() as audit:
        model(**batch)
    assert [(read.op, read.where.rsplit(":", 1)[0]) for read in audit.reads] == [
        ("_local_scalar_dense", "transformers/masking_utils.py")]
    assert "_ignore_bidirectional_mask_sdpa" in _function_at(audit.reads[0].where)


def _function_at(where: str) -> str:
    import ast

    path, line = where.rsplit(":", 1)
    tree = ast.parse((TRANSFORMERS.parent / path).read_text())
    return next(node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                and node.lineno <= int(line) <= node.end_lineno)


# ---- The prepared mask is the model's own ----

TINY = {"bert": {}, "roberta": {}, "xlm-roberta": {}, "electra": {"embedding_size": 32},
        "distilbert": {"hidden_dim": 64}, "gpt2": {"n_inner": 64}}  # each type's own names for the sizes


@pytest.mark.parametrize("model_type", [*TINY, "bert-decoder"])
def test_the_prepared_mask_gives_the_models_own_logits(model_type):
    """For every model type prepare_attention_masks knows, padded and unpadded batches (right and left padding) give
    exactly the logits of the model's own mask path -- and no read."""
    from transformers import AutoConfig

    from model import prepare_attention_masks

    name = model_type.removesuffix("-decoder")
    config = AutoConfig.for_model(name, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, pad_token_id=0, **TINY[name])
    config.is_decoder = model_type.endswith("-decoder")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(3, 100, (3, 9))
    right = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7])
    batches = [(ids, torch.ones_like(ids)), (ids * right, right), (ids * right.flip(1), right.flip(1))]
    with torch.no_grad():
        own = [model(input_ids=i, attention_mask=m).logits for i, m in batches]
        handle = prepare_attention_masks(model)
        assert handle is not None
        with HostReads() as audit:
            prepared = [model(input_ids=i, attention_mask=m).logits for i, m in batches]
        handle.remove()
    assert not audit.reads, listing(audit.reads)
    for mine, theirs in zip(prepared, own):
        assert torch.equal(mine, theirs)


def test_other_models_keep_their_own_mask_path():
    from types import SimpleNamespace

    from model import prepare_attention_masks

    layer = torch.nn.Linear(2, 2)
    layer.config = SimpleNamespace(model_type="modernbert")  # sliding-window layers: its own masks
    assert prepare_attention_masks(layer) is None and not layer._forward_pre_hooks


# ---- Compiled ----

@dataclasses.dataclass(frozen=True)
class CompiledRun:
    output_dir: Path
    audit: HostReads
    evaluations: int
    unique_graphs: int  # dynamo's counters, read right after the run (other tests clear them)
    graph_breaks: dict


@pytest.fixture(scope="module")
def compiled_run(tiny_bert, small_imdb, tmp_path_factory) -> CompiledRun:
    """The suite's one compiled training run in this process, audited, shared by the tests below: a compile takes
    ~15 s with a cold cache (as on a fresh machine), and an audited compile does not hit the cache a plain one fills."""
    torch._dynamo.reset()
    counters.clear()
    out = tmp_path_factory.mktemp("compiled")
    audit, evaluations = audited_run(tiny_bert, small_imdb, out, compiled=True)
    return CompiledRun(out, audit, evaluations, counters["stats"]["unique_graphs"], dict(counters["graph_break"]))


def test_the_compiled_step_reads_nothing_and_compiles_whole(compiled_run):
    """One compiled run (training and evaluation graphs) and a compiled predict. The audit sees what runs eagerly; the
    graphs themselves cannot hold a read: with dynamo's defaults below a data-dependent op breaks the graph, and there
    is no graph break."""
    from model import compile_classifier

    assert not torch._dynamo.config.capture_scalar_outputs  # .item() would break the graph, not enter it
    assert not torch._dynamo.config.capture_dynamic_output_shape_ops  # nonzero, masked_select: the same
    assert read_outputs(compiled_run.output_dir)[0]["config"]["torch_compile"] is True
    # Batches of many lengths and short last ones: still one graph for training, one for evaluation, each whole.
    assert compiled_run.unique_graphs == 2 and not compiled_run.graph_breaks, compiled_run.graph_breaks
    check_run(compiled_run.audit, compiled_run.evaluations)

    model, tokenizer = classifier_and_tokenizer(compiled_run.output_dir)
    eager = check_predict(model, tokenizer, TEXTS)
    counters.clear()
    compile_classifier(model, "default", fall_back_to_eager=False)
    compiled = check_predict(model, tokenizer, TEXTS, compiled=True)
    assert not counters["graph_break"]
    assert torch.allclose(compiled, eager, atol=1e-6)
    torch._dynamo.reset()


def test_the_compiled_run_gives_the_eager_per_step_losses(compiled_run, tiny_bert, small_imdb, tmp_path):
    run_train(audited_args(tiny_bert, small_imdb) + ["--output_dir", tmp_path / "eager", "--no-torch_compile"])
    (compiled, compiled_log), (eager, eager_log) = read_outputs(compiled_run.output_dir), read_outputs(tmp_path / "eager")
    assert compiled["speed"]["compile_seconds"] > 0 and eager["config"]["torch_compile"] is False
    # Its logging windows' mean real lengths differ: rows of many lengths (each batch padded to its longest).
    assert len({round(r["tokens_per_second"] / r["samples_per_second"]) for r in compiled_log}) == 4
    # Each logged loss is the mean of its 5 steps (the last: 1): a step that differed would show.
    assert [r["step"] for r in compiled_log] == [5, 10, 15, 16]
    assert [r["loss"] for r in compiled_log] == pytest.approx([r["loss"] for r in eager_log], abs=1e-4)
    assert compiled["after"]["loss"] == pytest.approx(eager["after"]["loss"], abs=1e-4)
    # The saved model is the plain module (compiling in place keeps the parameter names).
    saved = AutoModelForSequenceClassification.from_pretrained(compiled_run.output_dir)
    assert not any("_orig_mod" in name for name, _ in saved.named_parameters())
