"""Where a decode pipeline's time per image goes: each stage timed in one process on one thread
(as in a DataLoader worker, which runs torch.set_num_threads(1)), over the same images, for
  a        torchvision ImageFolder + PIL RandomResizedCrop + flip + ToTensor (bench_pipeline's baseline)
  b        the project's CPU backend (pipeline/cpu.py's ShardStream, run whole) over original-size shards
  b_r256   the same over `--resize 256` shards

    python tools/bench_pipeline.py --stages [--count 1000] [--repeats 3] [--batch-size 64] [--json]

Stages, microseconds per image (median of --repeats passes after one warm-up pass):
  read      a: the file's bytes; b: read_tars + parse + shuffle (tar members from the page cache,
            label and index checks)
  decode    the JPEG to RGB pixels; b: checked_image's header check, PIL open, decode at the
            `draft` scale augment.decode picks
  resize    a: RandomResizedCrop (PIL's crop + antialiased bilinear resize, one call);
            b: augment.resize (torch's uint8 antialiased bilinear)
  crop etc  a: flip + ToTensor (to float32); b: the rest of augment.train_image and cpu.decode:
            crop box, PIL crop, to_tensor, flip
  collate   one batch: a: torch.stack into a shared-memory tensor (what default_collate does in a
            worker); b: pipeline.cpu.batched + _collate (NHWC stack in ordinary memory)
  hand-over the batch pickled for the trainer's process as the DataLoader's queue does
            (ForkingPickler: b's tensor is copied into shared memory there, a's already is one)
            and unpickled (the fd received over a socket, mapped)
For b the stages are timed by wrapping the functions ShardStream calls (module attributes,
restored afterwards), each stage's time excluding the stages it calls, so the code timed is the
code the trainer runs; `other` is the rest of the wall time (generator glue, the timers).
The sum is a worker's CPU time per image: W workers on W free cores deliver at most W / sum
images a second (`bound_img_s`), and the ratio of two sums bounds the ratio of their rates."""
import contextlib
import functools
import io
import statistics
import time
from collections import defaultdict
from multiprocessing.reduction import ForkingPickler

import torch
import torch.multiprocessing  # noqa: F401  (registers torch's reducers: tensors travel in shared memory)
import torchvision
from PIL import Image

from pipeline import augment, cpu, loader

STAGES = ("read", "decode", "resize", "crop etc", "collate", "hand-over")
# (module, function, stage, generator?): what ShardStream calls, through module attributes
B_CALLS = [(cpu, "read_tars", "read", True), (cpu, "parse", "read", True), (cpu, "shuffle", "read", True),
           (cpu, "skip_items", "read", True),
           (cpu, "checked_image", "decode", False), (augment, "open_image", "decode", False),
           (augment, "decode", "decode", False),
           (augment, "resize", "resize", False),
           (cpu, "decode", "crop etc", True), (augment, "to_tensor", "crop etc", False),
           (cpu, "batched", "collate", True), (cpu, "_collate", "collate", False)]


class Clock:
    """Exclusive seconds per stage: time inside a stage minus the time of the stages it calls."""

    def __init__(self, now=time.perf_counter):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []
        self._now = now

    @contextlib.contextmanager
    def stage(self, name: str):
        self._stack.append([self._now(), 0.0])
        try:
            yield
        finally:
            start, inner = self._stack.pop()
            took = self._now() - start
            self.seconds[name] += took - inner
            if self._stack:
                self._stack[-1][1] += took

    def wrap(self, name: str, fn, generator: bool):
        if not generator:
            @functools.wraps(fn)
            def call(*a, **k):
                with self.stage(name):
                    return fn(*a, **k)
            return call

        @functools.wraps(fn)
        def gen(*a, **k):
            it = fn(*a, **k)
            while True:
                with self.stage(name):      # only the generator's own work, not its consumer's
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                yield item
        return gen


@contextlib.contextmanager
def instrumented(clock: Clock, calls=B_CALLS):
    saved = [(mod, name, getattr(mod, name)) for mod, name, _, _ in calls]
    try:
        for mod, name, stage, generator in calls:
            setattr(mod, name, clock.wrap(stage, getattr(mod, name), generator))
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hand_over(clock: Clock, batch) -> None:
    with clock.stage("hand-over"):
        ForkingPickler.loads(ForkingPickler.dumps(batch))


def pass_a(tree, size: int, batch_size: int, seed: int) -> tuple[dict, float, int]:
    """The baseline's work per image, stage by stage, in ImageFolder's order (pil_loader's
    open + convert("RGB"), then the three transforms)."""
    t = torchvision.transforms
    crop, flip, to_tensor = t.RandomResizedCrop(size), t.RandomHorizontalFlip(), t.ToTensor()
    samples = torchvision.datasets.ImageFolder(str(tree)).samples
    torch.manual_seed(seed)
    clock, start = Clock(), time.perf_counter()
    for i in range(0, len(samples), batch_size):
        xs, ys = [], []
        for path, label in samples[i:i + batch_size]:
            with clock.stage("read"):
                with open(path, "rb") as f:
                    data = f.read()
            with clock.stage("decode"):
                img = Image.open(io.BytesIO(data)).convert("RGB")
            with clock.stage("resize"):
                img = crop(img)
            with clock.stage("crop etc"):
                xs.append(to_tensor(flip(img)))
            ys.append(label)
        with clock.stage("collate"):        # default_collate inside a worker (collate_tensor_fn):
            shared = xs[0]._typed_storage()._new_shared(sum(x.numel() for x in xs), device=xs[0].device)
            out = xs[0].new(shared).resize_(len(xs), *xs[0].shape)          # stacked straight into shared memory
            batch = (torch.stack(xs, 0, out=out), torch.tensor(ys))
        hand_over(clock, batch)
    return clock.seconds, time.perf_counter() - start, len(samples)


def pass_b(shard_dir, size: int, batch_size: int, epoch: int) -> tuple[dict, float, int]:
    """pipeline.cpu.ShardStream over the train shards in this process (worker 0 of 1), every
    batch handed over as a DataLoader worker's would be."""
    ds = loader.resolve([str(shard_dir)])
    spec = cpu.ReadSpec(loader.spec_from_card(ds.card, size), train=True, batch_size=batch_size)
    stream = cpu.ShardStream(ds.urls["train"], spec, len(ds.classes), epoch)
    clock, n, start = Clock(), 0, time.perf_counter()
    with instrumented(clock):
        for tagged in stream:
            n += len(tagged.labels)
            hand_over(clock, tagged)
    return clock.seconds, time.perf_counter() - start, n


def profile(tree, dirs: dict, args, log=print) -> dict:
    """{loader: {stage: us per image, "other", "total", "bound_img_s", "n", "runs_total"}} and the
    ratio of a's total to each other's."""
    runs = {"a": lambda r: pass_a(tree, args.image_size, args.batch_size, r),
            "b": lambda r: pass_b(dirs["orig"], args.image_size, args.batch_size, r),
            "b_r256": lambda r: pass_b(dirs["r256"], args.image_size, args.batch_size, r)}
    got: dict = {name: [] for name in runs}
    with one_thread():
        for r in range(args.repeats + 1):               # round 0 warms up (page cache, allocator)
            for name, run in runs.items():
                seconds, wall, n = run(r)
                us = {s: 1e6 * seconds.get(s, 0.0) / n for s in STAGES}
                us["other"] = 1e6 * (wall - sum(seconds.values())) / n
                us["total"] = 1e6 * wall / n
                log(f"  stages round {r}{' (warm-up)' if r == 0 else ''} {name:<7} {us['total']:8.0f} us/img  "
                    + "  ".join(f"{s} {us[s]:.0f}" for s in (*STAGES, "other")))
                if r:
                    got[name].append((us, n))
    out = {}
    for name, passes in got.items():
        row = {k: round(statistics.median(us[k] for us, _ in passes), 1) for k in (*STAGES, "other", "total")}
        row["bound_img_s"] = round(args.workers * 1e6 / row["total"], 1)
        row["n"] = passes[0][1]
        row["runs_total"] = [round(us["total"], 1) for us, _ in passes]
        out[name] = row
    for name, row in out.items():
        row["a_over_this"] = round(out["a"]["total"] / row["total"], 2)
    return out


def print_table(res: dict, args) -> None:
    names = list(res)
    print(f"\nus per image, one process, one thread, median of {args.repeats} passes over "
          f"{res['a']['n']} images, batch {args.batch_size}, {args.image_size}px")
    print(f"  {'stage':<11}" + "".join(f"{n:>10}" for n in names))
    for k in (*STAGES, "other", "total"):
        print(f"  {k:<11}" + "".join(f"{res[n][k]:10.0f}" for n in names))
    print(f"  {'a / this':<11}" + "".join(f"{res[n]['a_over_this']:10.2f}" for n in names))
    print(f"  {'bound img/s':<11}" + "".join(f"{res[n]['bound_img_s']:10.0f}" for n in names)
          + f"   ({args.workers} workers on {args.workers} free cores)")
