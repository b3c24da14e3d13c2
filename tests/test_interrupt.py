"""Stopped runs continue with the command their message suggests, to the same bits: killed at any
moment, stopped by SIGINT or SIGTERM (also in the first epoch), or by a non-finite loss."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_same_files, train_cli

from sparsegrain import cli
from sparsegrain.core.io import load_tensors
from sparsegrain.recipe.load import load_recipe
from sparsegrain.runs import files as runfiles
from sparsegrain.train import loop
from sparsegrain.train.loop import Interrupted

RECIPE = {
    "model": {"name": "resnet_tiny"},
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "synthetic_train": 1024,
        "synthetic_test": 64,
        "image_size": 12,
    },
    "train": {
        "epochs": 6,
        "lr": 0.05,
        "progress": False,
        "seed": 5,
        "threads": 1,
        "deterministic": True,
    },
    "sparsity": {
        "method": "campfire",
        "structure": "kernel",
        "target": 0.6,
        "start": 0.5,
        "end": 4.5,
        "frequency": 8,
    },
}
SMALL = {**RECIPE, "data": {**RECIPE["data"], "synthetic_train": 128}}  # 4 steps an epoch


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sparsegrain", "train", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def epochs_done(out) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def leftovers(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def stop_line(proc: subprocess.Popen, sig: int) -> str:
    """The one stderr line of a run that ``sig`` stopped after its first checkpoint."""
    err = proc.stderr.read().decode().splitlines()
    assert len(err) == 1, err
    name = "interrupted" if sig == signal.SIGINT else f"terminated ({signal.Signals(sig).name})"
    assert err[0] == f"sparsegrain: {name}; resume with --resume"
    assert proc.returncode == 128 + sig  # 130 for SIGINT, 143 for SIGTERM
    return err[0]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The recipe file and its run, never stopped."""
    root = tmp_path_factory.mktemp("ref")
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert train_cli("--recipe", recipe, "--out", root / "ref") == 0
    return recipe, root / "ref"


def assert_same_run(ref_dir, out) -> None:
    assert_same_files(ref_dir, out)
    assert_same_files(ref_dir, out, "masks.safetensors")
    ref = json.loads((ref_dir / "summary.json").read_text())
    got = json.loads((out / "summary.json").read_text())
    assert got["top1"] == ref["top1"] and got["sparsity"] == ref["sparsity"]


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_identical_bits(tmp_path, ref):
    recipe, ref_dir = ref
    out = tmp_path / "killed"
    proc = start("--recipe", recipe, "--out", out)
    kills = 0
    for wait_for, delay in ((1, 0.0), (3, 0.05), (4, 0.13)):
        while epochs_done(out) < wait_for and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        # a kill mid-write must leave a readable checkpoint behind
        _, meta = load_tensors(out / "checkpoint.safetensors")
        assert meta["epoch"] >= 1
        proc = start("--out", out, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    assert kills >= 2
    assert_same_run(ref_dir, out)


@pytest.mark.slow
def test_sigterm_while_writing_is_one_line_leaves_no_temporary_file_and_resumes(tmp_path, ref):
    recipe, ref_dir = ref
    out = tmp_path / "term"
    proc = start("--recipe", recipe, "--out", out)
    while epochs_done(out) < 2 and proc.poll() is None:
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline and not leftovers(out):
        pass  # signal while a checkpoint or metrics file is being written, when one is caught
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stop_line(proc, signal.SIGTERM)
    assert leftovers(out) == []
    assert not (out / "summary.json").exists()
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] >= 2
    assert train_cli("--out", out, "--resume") == 0
    assert_same_run(ref_dir, out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_first_epoch_leaves_a_run_that_resume_continues(tmp_path, ref, sig):
    recipe, ref_dir = ref
    out = tmp_path / "first"
    proc = start("--recipe", recipe, "--out", out)
    while not (out / "checkpoint.safetensors").is_file() and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    stop_line(proc, sig)
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == 0 and meta["history"] == []
    assert epochs_done(out) == 0 and leftovers(out) == []
    assert train_cli("--out", out, "--resume") == 0
    assert_same_run(ref_dir, out)


def test_sigterm_raises_interrupted_and_gives_the_handler_back(tmp_path, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL))
    assert train_cli("--recipe", recipe, "--out", tmp_path / "ref") == 0
    real_save = runfiles.save_checkpoint

    def save_then_sigterm(out, model, opt, sp, epoch, *rest):
        real_save(out, model, opt, sp, epoch, *rest)
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler right after this

    def before(signum, frame):
        raise AssertionError("the run's handler was not the one called")

    previous = signal.signal(signal.SIGTERM, before)
    try:
        monkeypatch.setattr(runfiles, "save_checkpoint", save_then_sigterm)
        out = tmp_path / "term"
        with pytest.raises(Interrupted) as stop:
            loop.run(load_recipe(recipe), out, log=lambda *a: None)
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert str(stop.value) == "terminated (SIGTERM); resume with --resume"
    assert stop.value.status == 143 and isinstance(stop.value, KeyboardInterrupt)
    monkeypatch.undo()
    assert load_tensors(out / "checkpoint.safetensors")[1]["epoch"] == 2
    assert train_cli("--out", out, "--resume") == 0
    assert_same_files(tmp_path / "ref", out)


@pytest.mark.parametrize("where", ["setup", "start checkpoint"])
def test_a_stop_before_the_first_checkpoint_leaves_the_directory_to_the_same_command(
    tmp_path, monkeypatch, where
):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL))

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "setup":
        monkeypatch.setattr(loop, "build_model", stop)
    else:
        monkeypatch.setattr(runfiles, "save_checkpoint", stop)
    out = tmp_path / "early"
    with pytest.raises(Interrupted) as e:
        loop.run(load_recipe(recipe), out, log=lambda *a: None)
    assert str(e.value) == "interrupted before the first checkpoint; run the same command again"
    assert e.value.status == 130
    assert not out.exists() or list(out.iterdir()) == []  # nothing of the run is left
    monkeypatch.undo()
    assert train_cli("--recipe", recipe, "--out", out) == 0


@pytest.mark.parametrize("command", ["resume", "train again"])
def test_a_run_killed_between_its_recipe_and_first_checkpoint_is_no_dead_end(tmp_path, command):
    """SIGKILL can land between the two writes of a start: the directory holds recipe.yaml
    alone, with the lock file the killed process left. ``--resume`` starts that run from the
    beginning; a new ``train`` may use the directory. Either way the result is the uninterrupted
    run's."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL))
    assert train_cli("--recipe", recipe, "--out", tmp_path / "ref") == 0
    out = tmp_path / "killed"
    out.mkdir()
    (out / "recipe.yaml").write_text((tmp_path / "ref" / "recipe.yaml").read_text())
    (out / ".sparsegrain.lock").write_text("pid 1 on host h since t\n")  # the killed writer's
    args = ["--out", out, "--resume"] if command == "resume" else ["--recipe", recipe, "--out", out]
    assert train_cli(*args) == 0
    assert_same_files(tmp_path / "ref", out)
    assert_same_files(tmp_path / "ref", out, "masks.safetensors")


@pytest.mark.parametrize(
    ("nan_at", "where", "kept"),
    [(4 + 2, "epoch 2, step 6", "the checkpoint after epoch 1"), (2, "epoch 1, step 2", None)],
)
def test_non_finite_loss_stops_naming_the_step_and_the_checkpoint_kept(
    tmp_path, monkeypatch, capsys, nan_at, where, kept
):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL))

    class NaNAt(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, out, y):
            NaNAt.calls += 1
            loss = super().forward(out, y)
            return loss * float("nan") if NaNAt.calls == nan_at else loss

    monkeypatch.setattr("sparsegrain.train.loop.nn.CrossEntropyLoss", NaNAt)
    out = tmp_path / "nan"
    assert cli.main(["train", "--recipe", str(recipe), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sparsegrain: stopped: non-finite loss (nan) at {where}; "
        f"{kept or 'the start checkpoint'} is kept (lower train.lr?)"
    )
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == (1 if kept else 0)
    monkeypatch.undo()
    assert train_cli("--out", out, "--resume") == 0


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl", "recipe.yaml"])
def test_files_are_written_whole(tmp_path, name):
    recipe = tmp_path / "r.yaml"
    small = {
        **RECIPE,
        "data": {**RECIPE["data"], "synthetic_train": 64},
        "train": {**RECIPE["train"], "epochs": 1},
    }
    recipe.write_text(yaml.safe_dump(small))
    assert train_cli("--recipe", recipe, "--out", tmp_path / "run") == 0
    assert leftovers(tmp_path / "run") == []
    assert (tmp_path / "run" / name).read_text().strip()


def test_a_signal_while_the_start_is_written_waits_for_it_then_resume_continues(
    tmp_path, monkeypatch
):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(SMALL))
    assert train_cli("--recipe", recipe, "--out", tmp_path / "ref") == 0
    real_write = runfiles.write_recipe

    def write_then_sigint(out, recipe):
        real_write(out, recipe)
        os.kill(os.getpid(), signal.SIGINT)  # between the recipe and the start checkpoint

    monkeypatch.setattr(runfiles, "write_recipe", write_then_sigint)
    out = tmp_path / "held"
    with pytest.raises(Interrupted) as e:
        loop.run(load_recipe(recipe), out, log=lambda *a: None)
    assert str(e.value) == "interrupted; resume with --resume"
    assert load_tensors(out / "checkpoint.safetensors")[1]["epoch"] == 0
    monkeypatch.undo()
    assert train_cli("--out", out, "--resume") == 0
    assert_same_files(tmp_path / "ref", out)


def test_sigterm_stops_a_sweep_and_its_points(monkeypatch):
    """A sweep given SIGTERM stops its running points as Ctrl-C does (none is orphaned) and
    exits 143 with the sweep's own line."""
    import signal as _signal

    from sparsegrain.train import sweep as sw

    stopped = []
    monkeypatch.setattr(sw, "check_points", lambda *a: None)
    monkeypatch.setattr(sw, "_stop_running", lambda: stopped.append(True))

    def point(*args, **kwargs):
        os.kill(os.getpid(), _signal.SIGTERM)
        time.sleep(2)

    monkeypatch.setattr(sw, "run_point", point)
    with pytest.raises(KeyboardInterrupt) as e:
        sw.sweep(Path("r.yaml"), Path("out"), [("p", [])])
    assert e.value.status == 143 and stopped
    assert _signal.getsignal(_signal.SIGTERM) is _signal.SIG_DFL


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_any_command_is_one_line_and_its_status(tmp_path, ref, sig):
    """Outside a training run's own handlers (start-up, export, analyze) a signal still ends the
    command with one line and 128 + the signal, never a traceback or a silent death."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _, ref_dir = ref
    cmd = [sys.executable, "-m", "sparsegrain", "export", "--run", str(ref_dir), "--out",
           str(tmp_path / "m.sgc"), "--format", "compressed"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # inside start-up: the imports of torch and sparsegrain
    proc.send_signal(sig)
    status = proc.wait(timeout=60)
    err = proc.stderr.read().decode().splitlines()
    assert status == 128 + sig, err[-20:]
    name = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert err == [f"sparsegrain: {name}; run the same command again"]
    assert not (tmp_path / "m.sgc").exists() and list(tmp_path.iterdir()) == []
