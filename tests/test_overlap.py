"""core.overlap's choices, on the CPU: which kernels of a recorded decoding step go beside which, and where the main
stream waits. Streams and events are stand-ins that log what the recording would ask of the GPU; the model is a
tiny random Llama run as core.decode.Replayed records it (one graph from an attention call to the next).
On the GPU, tests/test_gpu.py checks that the replayed steps keep plain generate()'s bits with it."""

from __future__ import annotations

import pytest
import torch

from core import overlap


class Streams:
    """torch.cuda's streams, events and capture state, as a log: ("run", op, stream), ("wait", waiter, waited)."""

    def __init__(self, monkeypatch):
        self.log: list[tuple] = []
        self.current = "main"
        streams = self
        made = iter(range(1, 100))

        class Stream:
            def __init__(self, device=None):
                self.name, self.device = f"side{next(made)}", "cpu"

            def wait_stream(self, other):
                streams.log.append(("wait", self.name, other.name))

            def wait_event(self, event):
                streams.log.append(("wait", self.name, f"event of {event.on}"))

        class Main(Stream):
            def __init__(self):
                self.name, self.device = "main", "cpu"

        class Event:
            def record(self, stream):
                self.on = stream.name

        class Switch:
            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                self.before, streams.current = streams.current, self.stream.name

            def __exit__(self, *exc):
                streams.current = self.before

        main = Main()
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: main)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "stream", Switch)
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        monkeypatch.setattr(torch.Tensor, "record_stream",
                            lambda tensor, stream: streams.log.append(("keep", tensor.shape, stream.name)))
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))


@pytest.fixture
def recorded(monkeypatch):
    """The log of one step of a 2-layer Llama recorded with overlap, split at each attention call."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    streams = Streams(monkeypatch)
    side = overlap.mode()
    from torch.utils._python_dispatch import TorchDispatchMode

    weights = {m.weight.untyped_storage().data_ptr(): n.split(".")[-1] for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}

    class Projections(TorchDispatchMode):  # logs each projection's kernel with the stream current as it runs
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            for a in args:
                name = weights.get(a.untyped_storage().data_ptr()) if isinstance(a, torch.Tensor) else None
                if name and func.__name__.split(".")[0] in ("mm", "addmm", "linear", "matmul"):
                    streams.log.append(("run", name, streams.current))
            return func(*args, **(kwargs or {}))

    keys = torch.zeros(1, 2, 8, 8)

    def split(module, query, key, value, mask, **kwargs):  # as Replayed's: the cache written, then a new graph
        keys[:, :, :1].copy_(key)
        side.join()
        streams.log.append(("graph",))
        side.begin()
        return torch.zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None

    ALL_ATTENTION_FUNCTIONS["sdpa"] = split
    try:
        side.begin()
        with torch.no_grad(), Projections(), side:
            model(input_ids=torch.tensor([[5]]), position_ids=torch.tensor([[3]]), use_cache=False)
        side.join()
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]
    return streams.log, side


def test_key_and_value_projections_run_beside_the_query_projection(recorded):
    log, side = recorded
    runs = [(op, stream) for kind, *rest in log if kind == "run" for op, stream in [rest]]
    assert runs[:3] == [("q_proj", "main"), ("k_proj", "side1"), ("v_proj", "side2")]
    # Each side stream starts when the normed input is written (an event), not after the query's projection.
    order = [entry for entry in log if entry[0] != "keep"]
    first_k = order.index(("run", "k_proj", "side1"))
    assert order[first_k - 1] == ("wait", "side1", "event of main")
    assert side.forks > 0


def test_the_mlp_up_projection_runs_beside_the_gate_and_the_main_stream_waits_before_their_product(recorded):
    log, _ = recorded
    runs = [(op, stream) for kind, *rest in log if kind == "run" for op, stream in [rest]]
    assert ("gate_proj", "main") in runs and ("up_proj", "side1") in runs
    up = log.index(("run", "up_proj", "side1"))
    down = log.index(("run", "down_proj", "main"))
    assert ("wait", "main", "side1") in log[up:down]  # the product of gate and up waits for up


def test_every_side_stream_is_joined_before_a_graph_ends_and_later_layers_keep_overlapping(recorded):
    log, _ = recorded
    graphs = [i for i, entry in enumerate(log) if entry == ("graph",)]
    assert len(graphs) == 2  # two attention calls
    for end in graphs:
        before = log[:end]
        forked = {entry[1] for entry in before if entry[0] == "wait" and entry[1].startswith("side")}
        joined = {entry[2] for entry in before if entry[0] == "wait" and entry[1] == "main"}
        assert forked <= joined, (forked, joined)
    # The second layer, recorded in its own graph, runs its k and v projections on side streams as well.
    after = log[graphs[0]:]
    assert ("run", "k_proj", "side1") in after and ("run", "v_proj", "side2") in after


def test_without_capture_nothing_changes_stream():
    side = overlap.mode()
    x = torch.ones(4, 4)
    with side:
        y = torch.nn.functional.linear(x, x) + torch.nn.functional.linear(x, x)
    assert torch.equal(y, 2 * x @ x.T) and side.forks == 0


def test_the_main_stream_waits_before_writing_what_a_side_stream_reads_and_keeps_side_memory_it_reads(monkeypatch):
    """A side stream starts at an event, not at the main stream's end, so the main stream must wait for it before an
    in-place write to memory it reads; and memory a side stream wrote is kept from reuse while the main one reads it."""
    streams = Streams(monkeypatch)
    side = overlap.mode()
    x, w = torch.ones(1, 4), torch.ones(4, 4)
    side.begin()
    with side:
        x = x * 2
        a = torch.nn.functional.linear(x, w)  # main
        b = torch.nn.functional.linear(x, 2 * w)  # beside it: reads x
        streams.log.append(("mark",))
        x.add_(1)  # on the main stream, after the side stream is waited for
        c = a + b  # reads the side stream's memory on the main stream
    side.join()
    log = streams.log
    assert ("wait", "side1", "event of main") in log
    mark = log.index(("mark",))
    assert log[mark + 1] == ("wait", "main", "side1")
    assert ("keep", torch.Size([1, 4]), "main") in log[mark:]
    assert torch.equal(c, torch.full((1, 4), 24.0)) and torch.equal(x, torch.full((1, 4), 3.0))
