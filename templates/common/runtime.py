"""What every trainer does the same way, whatever its spec and framework: check the command line,
hold the run directory, write its files (metrics.jsonl, final.json, checkpoints that carry their
own digest) so that none is ever half written, and stop cleanly on Ctrl-C or SIGTERM.

train.py imports it; it needs only the standard library. Every fault a user can fix ends the run
with one line naming the file and what to do, and an exit status of 2 (the command line) or 1.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import numbers
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

CHECKPOINT_FORMAT = 2  # of the `resdsl` entry in a checkpoint's dict: format, spec, sha256
# what a checkpoint file is, by its first bytes (checkpoint_kind)
CHECKPOINT_KINDS = {
    "torch": "a PyTorch trainer's checkpoint (torch.save)",
    "jax": "a JAX trainer's checkpoint (Flax's msgpack)",
    "format 1": "a checkpoint of an earlier resdsl trainer (a text header, then the state)",
}


class RunError(Exception):
    """A fault the user can fix: reported in one line, exit status 1."""


class Stopped(RunError):
    """Training cannot go on (a NaN loss, a full disk); the last good checkpoint stays."""

    def __init__(self, reason: str, checkpoint: Path) -> None:
        kept = (
            f"the last good checkpoint is {checkpoint}"
            if checkpoint.exists()
            else "no checkpoint was written"
        )
        super().__init__(f"{reason}; stopping ({kept})")


class Interrupted(Exception):
    """SIGINT or SIGTERM: `iteration` is that of the checkpoint written, None before training;
    the lead process alone says how to go on."""

    def __init__(self, signum: int, iteration: int | None = None, lead: bool = True) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.iteration, self.lead = signum, iteration, lead


# The command line ---------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with a usage error on one line (exit status 2), not the usage text first."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def non_negative(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None


def training_parser(
    description: str,
    *,
    data: str,
    out: str,
    batch_size: int,
    val_split: int,
    checkpoint: str,
    held_out: str,
) -> Parser:
    """The flags every trainer has, with the spec's defaults; train.py adds its framework's."""
    p = Parser(description=description)
    p.add_argument("--data", default=data, help="dataset directory (default: %(default)s)")
    p.add_argument("--out", default=out, help="run directory (default: %(default)s)")
    p.add_argument(
        "--iterations", type=positive, help="train this many iterations; milestones scale"
    )
    p.add_argument("--batch-size", type=positive, default=batch_size, help="global batch size")
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument(
        "--checkpoint-every", type=positive, default=1000, metavar="N", help="iterations"
    )
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{checkpoint}")
    p.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint and stop")
    p.add_argument("--checkpoint", type=Path, help="checkpoint for --eval-only")
    p.add_argument("--init-from", type=Path, metavar="FILE",
                   help="start from the weights of a torchvision-format state_dict file (.pth; "
                   "nothing is downloaded); every key must match")  # fmt: skip
    p.add_argument("--reinit-head", action="store_true",
                   help=f"with --init-from: leave the {HEAD} layer as initialised (another class "
                   "count); every other key must match")  # fmt: skip
    p.add_argument("--val-split", type=non_negative, default=val_split, metavar="N",
                   help=f"hold out {held_out} for validation")  # fmt: skip
    p.add_argument("--eval-images", type=positive, metavar="N",
                   help="evaluate N images of each split only")  # fmt: skip
    p.add_argument("--eval-every", type=non_negative, metavar="N",
                   help="also measure the test error every N iterations, for the curves of "
                   "`resdsl plot` (default: a tenth of the run; 0: at the end only)")  # fmt: skip
    p.add_argument("--log-every", type=positive, metavar="N",
                   help="iterations (default: 100, or a tenth of a short run)")  # fmt: skip
    switch(p, "--progress", "a progress bar (default: when stderr is a terminal)")
    return p


def curve_interval(eval_every: int | None, total: int) -> int:
    """Iterations between the test evaluations of the curve: --eval-every, by default a tenth of
    the run (0: none before the end, as for runs of fewer than 10 iterations)."""
    return total // 10 if eval_every is None else eval_every


def switch(p: Parser, flag: str, help: str, default: bool | None = None) -> None:
    """An on/off flag, --NAME and --no-NAME; None leaves the choice to the trainer."""
    p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)


def parse(p: Parser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.eval_only and args.checkpoint is None:
        p.error("--eval-only needs --checkpoint PATH")
    if args.init_from is not None and (args.resume or args.eval_only):
        p.error("--init-from starts a new run: it cannot be combined with --resume or --eval-only")
    if args.reinit_head and args.init_from is None:
        p.error("--reinit-head needs --init-from FILE")
    return args


def export_parser(
    run: str, name: str, spec: str, checkpoint: str, formats: dict[str, tuple[str, str]]
) -> Parser:
    """export.py's flags: --checkpoint, --format (one of `formats`: what writes it and the file
    name's usual suffix), -o and --seed; `run` is train.py's default run directory."""
    first, (_, suffix) = next(iter(formats.items()))
    example = f"{sys.argv[0]} --checkpoint {run}/{checkpoint} --format {first} -o {name}{suffix}"
    p = Parser(description=f"Export {name} ({spec}) for inference: eval mode, any batch size.",
               epilog=f"example:\n  python {example}",
               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--checkpoint", type=Path,
                   help="a checkpoint written by train.py (default: none, the freshly initialised "
                   "network)")  # fmt: skip
    p.add_argument("--format", required=True, choices=list(formats),
                   help=" or ".join(f"{f} ({how})" for f, (how, _) in formats.items()))  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    p.add_argument("--seed", type=integer, default=0,
                   help="initialisation without --checkpoint (default: %(default)s)")  # fmt: skip
    switch(p, "--preprocess", "the spec's test-time preprocessing (data.py's, with the "
           "checkpoint's statistics) inside the exported graph, which then takes images as the "
           "dataset gives them, in [0, 1] (default: on)", default=True)  # fmt: skip
    return p


# Starting from weights (--init-from) --------------------------------------------------------
HEAD = "fc"  # the classifier, left as initialised by --reinit-head (`head.fc` in timm's byobnet)


def is_head(name: str) -> bool:
    """Whether a state_dict name belongs to the classifier (`fc.weight`, `head.fc.weight`)."""
    return name.split(".")[0] == HEAD or name.startswith(f"head.{HEAD}.")


def names_listed(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def state_dict_mismatch(path: Path, missing: list[str], unexpected: list[str]) -> RunError:
    """A state_dict file whose names are not the network's: the first few of each kind."""
    parts = [f"missing keys {names_listed(missing)}"] if missing else []
    parts += [f"unexpected keys {names_listed(unexpected)}"] if unexpected else []
    return RunError(f"{path} does not match this network: {'; '.join(parts)}")


def shape_mismatch(path: Path, wrong: list[tuple[str, tuple, tuple]]) -> RunError:
    """A state_dict file with tensors of other shapes: (name, the file's, the network's)."""
    listed = "; ".join(f"{name} is {list(got)}, not {list(want)}" for name, got, want in wrong[:3])
    hint = (
        " (another class count: add --reinit-head)"
        if all(is_head(name) for name, _, _ in wrong)
        else ""
    )
    return RunError(f"{path} does not match this network: {listed}{hint}")


def resume_command() -> str:
    """The command that started this process (under torchrun, torchrun's), with --resume: how to
    go on after a stop."""
    words = list(sys.orig_argv)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a worker: its parent is the torchrun command
        with contextlib.suppress(OSError):
            parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode()
            words = parent.rstrip("\0").split("\0")
    return shlex.join(words if "--resume" in words else [*words, "--resume"])


# The run directory --------------------------------------------------------------------------
class RunDirectory:
    """OUT: held with a lock for as long as a run trains into it, and its files.

    A run that is not resumed must find no earlier run's files there; a second run started on
    the same directory is refused while the first holds the lock (checked before anything is
    written, so even a run that has written nothing yet is protected).
    """

    def __init__(self, path: Path, checkpoint_name: str) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / checkpoint_name
        self.metrics = self.path / "metrics.jsonl"
        self.final = self.path / "final.json"
        self.lock_file = None

    def hold(self, resume: bool) -> None:
        """Create the directory and lock it for this run (the lead process only)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / "lock", "a+")
        except OSError as error:
            raise RunError(
                f"cannot use {self.path} as the run directory: {error.strerror}"
            ) from None
        if not take_lock(lock):
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise RunError(
                f"{self.path} is in use by another run (pid {holder}); wait for it to end, or "
                "train into another directory (--out)"
            )
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self.lock_file = lock  # held until the process ends
        earlier = [p.name for p in (self.checkpoint, self.metrics, self.final) if p.exists()]
        if earlier and not resume:  # never overwrite another run
            raise RunError(
                f"{self.path} holds an earlier run ({', '.join(earlier)}); go on with it "
                "(--resume) or train into another directory (--out)"
            )

    def start(self, resume: bool, lead: bool) -> bool:
        """Hold the directory for this run (the lead process does); False when a finished run is
        resumed: that is said, and nothing is changed."""
        if lead:
            self.hold(resume)
        finished = self.finished() if resume else None
        if finished and lead:
            print(finished)
        return finished is None

    def resume_at(self, iteration: int) -> None:
        """Going on from the checkpoint of `iteration` (0: there was none, the run starts again):
        what was logged after it is dropped, as it is logged again."""
        self.keep_metrics_until(iteration)
        if iteration:
            print(f"resumed from {self.checkpoint} at iteration {iteration}")

    def finished(self) -> str | None:
        """What a resumed run that has already ended says (and then does nothing), or None."""
        try:
            final = json.loads(self.final.read_text())
            error = final["test_top1_error"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunError(
                f"{self.final} cannot be read ({error}); move it away to go on"
            ) from None
        return (
            f"{self.path} holds a finished run ({final['iterations']} iterations, test error "
            f"{error:.2%}); nothing to do: train a new one into another directory (--out)"
        )

    def append_metrics(self, record: dict) -> None:
        try:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as error:
            raise Stopped(
                f"cannot write {self.metrics}: {error.strerror}", self.checkpoint
            ) from None

    def keep_metrics_until(self, iteration: int) -> None:
        """On resume, drop what was logged after the checkpoint (it is logged again), and a last
        line cut short when the run was stopped."""
        if self.metrics.exists():
            kept = []
            for line in self.metrics.read_text().splitlines():
                try:
                    if json.loads(line)["iteration"] <= iteration:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass
            self.write(self.metrics, "".join(kept).encode())

    def write_final(self, final: dict) -> None:
        self.write(self.final, (json.dumps(final, indent=2) + "\n").encode())

    def write(self, path: Path, data: bytes) -> None:
        try:
            write_file(path, data)
        except OSError as error:
            raise Stopped(f"cannot write {path}: {error.strerror}", self.checkpoint) from None

    def save_checkpoint(self, payload: bytes) -> None:
        """The checkpoint: the framework's file of a sealed state (`seal`), renamed into place."""
        self.write(self.checkpoint, payload)


def write_file(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it: the file is never half written.
    A failure (a full disk) leaves the old file and no temporary one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def take_lock(lock, wait_s: float = 60.0) -> bool:
    """flock `lock`, unless a live run holds it. A run that was killed may leave its lock held a
    few seconds by its loader processes (forked, they share the open file) until they notice and
    exit: the lock is waited for then."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            if not holder.isdigit() or alive(int(holder)) or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def checkpoint_kind(head: bytes) -> str | None:
    """Which trainer wrote a file, from its first bytes: a zip archive is torch.save's, a
    non-empty msgpack map Flax's; None for anything else (a pickle starts with 0x80)."""
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head[:1] and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):  # 0x80: a pickle's
        return "jax"
    if head.startswith(b"resdsl checkpoint 1\n"):
        return "format 1"
    return None


def state_digest(state, array_bytes: Callable) -> str:
    """SHA-256 of a checkpoint's state: its keys, numbers, strings and structure, and the dtype,
    shape and bytes of its arrays (`array_bytes(value)` gives them, or None for what is not an
    array). Tuples and lists count alike: msgpack reads tuples back as lists."""
    digest = hashlib.sha256()

    def walk(value) -> None:
        data = array_bytes(value)
        if data is not None:
            digest.update(b"A%d:" % len(data) + data)
        elif isinstance(value, dict):
            digest.update(b"D%d:" % len(value))
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode() + b"=")
                walk(value[key])
        elif isinstance(value, list | tuple):
            digest.update(b"L%d:" % len(value))
            for item in value:
                walk(item)
        elif value is None or isinstance(value, bool | str | bytes):
            digest.update(b"S" + repr(value).encode() + b";")
        elif isinstance(value, numbers.Integral):
            digest.update(b"I%d;" % int(value))
        elif isinstance(value, numbers.Real):
            digest.update(b"F" + float(value).hex().encode() + b";")
        else:
            raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")

    walk(state)
    return digest.hexdigest()


def seal(state: dict, spec: str, array_bytes: Callable) -> dict:
    """The state with its `resdsl` entry: the checkpoint format, the spec and the digest, which
    `open_checkpoint` checks. The file stays the framework's own (torch.load, msgpack_restore)."""
    mark = {"format": CHECKPOINT_FORMAT, "spec": spec, "sha256": state_digest(state, array_bytes)}
    return {**state, "resdsl": mark}


def open_checkpoint(
    path: Path, spec: str | None, kind: str, load: Callable, array_bytes: Callable
) -> dict:
    """The state of a checkpoint that a `kind` ("torch", "jax") trainer wrote for `spec` (None:
    any), without its `resdsl` entry: `load(path)` reads the file as the framework does, then
    the digest and the spec are checked. A missing, foreign, damaged or other spec's file is
    refused with one line, and left as it is."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(32)
    except FileNotFoundError:
        raise RunError(
            f"{path} does not exist; give the path of a checkpoint written by train.py"
        ) from None
    except OSError as error:
        raise RunError(f"{path} cannot be read: {error.strerror}") from None
    found = checkpoint_kind(head)
    if found != kind:
        trainer = "PyTorch" if kind == "torch" else "JAX"
        what = CHECKPOINT_KINDS.get(found, "not a checkpoint written by a resdsl trainer")
        raise RunError(f"{path} is {what}; this {trainer} trainer reads the checkpoints it writes")
    damaged = f"{path} is damaged or cut short"
    advice = "it is left as it is: resume from a copy, or train into another directory (--out)"
    try:
        state = load(path)
    except Exception as error:  # whatever the framework's reader raises on a broken file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RunError(f"{damaged} ({reason}); {advice}") from None
    mark = state.pop("resdsl", None) if isinstance(state, dict) else None
    if not isinstance(mark, dict) or mark.get("format") != CHECKPOINT_FORMAT:
        raise RunError(
            f"{path} is not a checkpoint of a resdsl trainer (it has no `resdsl` entry); "
            "weights alone start a new run with --init-from"
        )
    if state_digest(state, array_bytes) != mark.get("sha256"):
        raise RunError(f"{damaged} (its contents do not match the digest written in it); {advice}")
    if spec is not None and mark.get("spec") != spec:
        raise RunError(f"{path} is a checkpoint of {mark.get('spec')}, not of {spec}")
    return state


# Signals ------------------------------------------------------------------------------------
class Signals:
    """SIGINT (Ctrl-C) and SIGTERM. While training (`armed`), the first one is noted and the loop
    ends the step, writes a checkpoint and stops; otherwise, or a second time, it stops at once."""

    def __init__(self) -> None:
        self.received, self.armed = None, False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame) -> None:
        if self.armed and self.received is None:
            self.received = signum
            return
        raise Interrupted(signum)


class Unbroken:
    """stdout for a run: once its reader has gone (`train.py | head`), what is printed goes to
    /dev/null rather than stopping the run (metrics.jsonl keeps every record)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.unbroken(self.stream.write, text)

    def flush(self) -> None:
        self.unbroken(self.stream.flush)

    def unbroken(self, method: Callable, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
            return method(*args)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def main_guard(main: Callable[[], None], errors: tuple[type[Exception], ...] = ()) -> None:
    """Run `main`; a fault the user can fix (RunError and `errors`) or a signal ends the process
    with one line on stderr instead of a traceback."""
    sys.stdout = Unbroken(sys.stdout)
    try:
        main()
    except Interrupted as stop:
        if stop.iteration is None:
            message = f"stopped by {stop}; the checkpoint, if any, is the last one written"
        else:
            message = f"stopped at iteration {stop.iteration}; go on with: {resume_command()}"
        if stop.lead:
            print(message, file=sys.stderr)
        sys.exit(128 + stop.signum)
    except (RunError, *errors) as error:
        sys.exit(f"error: {error}")


# The training log ---------------------------------------------------------------------------
class TrainingLog:
    """Training's progress and clock. A record per log interval (the mean loss and error since
    the last one, the learning rate, images/s) goes to metrics.jsonl and to the terminal or a
    tqdm bar; the clock (training time without the pauses for validation and checkpoints, the
    images trained on, the whole run's time) is carried over resumes in the checkpoint."""

    def __init__(
        self,
        run: RunDirectory,
        args: argparse.Namespace,
        total: int,
        start: int,
        *,
        lead: bool,
        clock: dict | None = None,
    ) -> None:
        """`args`: --log-every, --batch-size and --progress; `clock`: a checkpoint's."""
        self.run, self.total, self.batch_size, self.lead = run, total, args.batch_size, lead
        self.every = args.log_every or max(1, min(100, total // 10))
        self.clock = dict(clock or {"train_s": 0.0, "images": 0, "wall_s": 0.0})
        self.started = self.interval_start = time.perf_counter()
        self.bar = None
        if args.progress and lead:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True)

    def due(self, done: int) -> bool:
        return done % self.every == 0 or done == self.total

    def interval(self, done: int, lr: float, loss: float, error: float, iterations: int) -> None:
        """The log record of the `iterations` up to `done`; a loss that is not finite stops."""
        if not math.isfinite(loss):
            raise Stopped(f"the training loss is {loss} by iteration {done}", self.run.checkpoint)
        seconds = time.perf_counter() - self.interval_start
        self.interval_start = time.perf_counter()
        self.clock["train_s"] += seconds
        self.clock["images"] += iterations * self.batch_size
        rate = iterations * self.batch_size / seconds
        if not self.lead:
            return
        self.run.append_metrics(
            {
                "iteration": done,
                "lr": lr,
                "train_loss": loss,
                "train_error": error,
                "images_per_s": rate,
            }
        )
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"loss {loss:.3f} err {error:.1%}")
        else:
            line = f"iter {done:>7}/{self.total}  lr {lr:.4g}  loss {loss:.4f}  error {error:.2%}"
            print(f"{line}  {rate:,.0f} img/s", flush=True)

    @contextlib.contextmanager
    def paused(self):
        """Time that is not training time (validation, checkpoints)."""
        paused = time.perf_counter()
        yield
        self.interval_start += time.perf_counter() - paused

    def state(self) -> dict:
        """The clock, for a checkpoint."""
        return {**self.clock, "wall_s": self.clock["wall_s"] + time.perf_counter() - self.started}

    def finish(
        self, results: dict, protocol: str, spec: str, recipe: str | None, backend: str
    ) -> None:
        """The evaluations to metrics.jsonl, final.json (the test errors by `protocol`, and what
        was trained: the spec, its recipe, the backend)."""
        if self.bar is not None:
            self.bar.close()
        if not self.lead:
            return
        for split, by_protocol in results.items():
            for name, result in by_protocol.items():
                record = {"iteration": self.total, "split": split, "protocol": name}
                self.run.append_metrics({**record, **result})
        test, clock = results["test"][protocol], self.state()
        self.run.write_final({
            "spec": spec,
            "recipe": recipe,
            "backend": backend,
            "iterations": self.total,
            "test_top1_error": test["top1_error"],
            "test_top5_error": test.get("top5_error"),
            "wall_s": clock["wall_s"],  # the whole run
            "train_s": clock["train_s"],  # the training iterations alone
            "images_per_s": clock["images"] / clock["train_s"] if clock["train_s"] else None,
            "results": results,
        })  # fmt: skip
        error = test["top1_error"]
        print(f"test error {error:.2%} (accuracy {1 - error:.2%}) after {self.total} iterations")
