"""File-system mistakes and faults: one line on stderr naming the path or flag and what is
wrong, exit status 2, no traceback, and every file that was there before left byte-identical.

Covers output paths of every writing command (a run's own files, files a command reads, a
directory where a file goes and the reverse, dangling links, read-only places, a full disk),
files read back (checkpoint metadata, summary.json, analysis.json), flags checked before any
work, the writer's lock, ``--overwrite`` replacing a run only once the new one has started, the
umask, and a stopped sweep continued by the same command."""

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import torch
import yaml
from conftest import train_cli
from safetensors.torch import save_file

from sparsegrain import cli
from sparsegrain.core import io
from sparsegrain.core.io import load_tensors, save_tensors
from sparsegrain.runs import files as runfiles
from sparsegrain.runs.rundir import JOURNAL, LOCK, STAGING, RunDir, RunLock

SPARSE = {"method": "campfire", "structure": "fine", "target": 0.5, "start": 0, "end": 0.5,
          "frequency": 1, "exclude": []}  # fmt: skip
TINY = {
    "model": {"name": "mlp_tiny", "input_size": 8},
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "synthetic_train": 64,
        "synthetic_test": 32,
        "image_size": 8,
    },
    "train": {"epochs": 1, "progress": False, "threads": 1},
    "sparsity": SPARSE,
}
POINT = ["--methods", "campfire", "--structures", "fine", "--targets", "0.5"]


def snapshot(root) -> dict:
    """Every entry under ``root``: file bytes (hashed) and mode, link targets, directories."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", st.st_mode)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", st.st_mode, hashlib.sha256(f.read()).hexdigest())
    return out


def run_cli(argv, capsys) -> tuple[int, str]:
    """``cli.main(argv)``: the exit status and stderr, checked to be one line, no traceback."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err, err
    return code, err


def refused(argv, capsys, root, fragment) -> str:
    """The command exits 2 with one line holding ``fragment``, and nothing under ``root``
    changed: no file lost, changed or added."""
    before = snapshot(root)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert fragment in err, err
    assert snapshot(root) == before
    return err


def edit_checkpoint(src, dst, tensors=None, meta=None, raw_meta=None):
    """``dst``: a resumable copy of run ``src`` (recipe + checkpoint), the checkpoint edited."""
    dst.mkdir()
    shutil.copy(src / "recipe.yaml", dst / "recipe.yaml")
    t, m = load_tensors(src / "checkpoint.safetensors")
    if tensors:
        t = tensors(t)
    if raw_meta is not None:
        save_file(t, str(dst / "checkpoint.safetensors"), metadata={"sparsegrain": raw_meta})
        return
    save_tensors(dst / "checkpoint.safetensors", t, meta(m) if meta else m)


def without(record: dict, *keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def copy_run(src, dst, **files):
    """A copy of run ``src`` with some files replaced (name -> text, None to drop it)."""
    shutil.copytree(src, dst)
    for name, text in files.items():
        name = name.replace("_", ".")
        if text is None:
            (dst / name).unlink()
        else:
            (dst / name).write_text(text)
    return dst


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    assert train_cli("--recipe", recipe, "--out", root / "run") == 0
    assert train_cli("--recipe", recipe, "--out", root / "other", "--set", "train.seed=1") == 0
    run = root / "run"
    summary = json.loads((run / "summary.json").read_text())
    analysis = {"storage": {"total": {"ratio": 2.0}}, "accelerator": {"total": {}}}
    copy_run(run, root / "trsum", summary_json=(run / "summary.json").read_text()[:100])
    copy_run(run, root / "listsum", summary_json="[1, 2]")
    copy_run(run, root / "notop1", summary_json=json.dumps({**summary, "top1": None}))
    copy_run(run, root / "nokey", summary_json=json.dumps(without(summary, "top1")))
    copy_run(run, root / "nolayers", summary_json=json.dumps(without(summary, "layers")))
    rows = [without(r, "structure", "achieved") for r in summary["layers"]]
    copy_run(run, root / "nostruct", summary_json=json.dumps({**summary, "layers": rows}))
    copy_run(run, root / "badanalysis", analysis_json='{"storage": {"tot')
    copy_run(run, root / "thinanalysis", analysis_json=json.dumps(analysis))
    copy_run(run, root / "noweights", model_safetensors=None, summary_json=None)
    # checkpoints of the wrong shape, each in a directory --resume would continue
    edit_checkpoint(run, root / "ck_nohistory", meta=lambda m: without(m, "history"))
    edit_checkpoint(run, root / "ck_negative", meta=lambda m: {**m, "epoch": -1})
    edit_checkpoint(run, root / "ck_beyond", meta=lambda m: {**m, "epoch": 7})
    edit_checkpoint(run, root / "ck_sparsity", meta=lambda m: {**m, "sparsity": [1, 2]})
    edit_checkpoint(run, root / "ck_optim", meta=lambda m: {**m, "optim": {"scalars": {}}})
    edit_checkpoint(run, root / "ck_notobj", raw_meta="[1, 2]")
    edit_checkpoint(run, root / "ck_norng", tensors=lambda t: without(t, "rng.torch"))
    edit_checkpoint(
        run, root / "ck_mask", tensors=lambda t: {**t, "sparsity.masks/fc1": torch.ones(3, 3) > 0}
    )
    # checkpoint tensors that do not fit the optimizer or the sparsity state they restore
    edit_checkpoint(
        run,
        root / "ck_momentum",
        tensors=lambda t: {**t, "optim.0.momentum_buffer": torch.zeros(1)},
    )
    edit_checkpoint(
        run,
        root / "ck_optidx",
        tensors=lambda t: {**t, "optim.999.momentum_buffer": torch.zeros(1)},
    )
    edit_checkpoint(
        run,
        root / "ck_floatmask",
        tensors=lambda t: {
            k: v.float() * 3 if k.startswith("sparsity.masks") else v for k, v in t.items()
        },
    )
    edit_checkpoint(
        run,
        root / "ck_nan",
        tensors=lambda t: {**t, "model.fc1.bias": t["model.fc1.bias"] * float("nan")},
    )
    edit_checkpoint(
        run,
        root / "ck_infmom",
        tensors=lambda t: {
            k: v * float("inf") if k.startswith("optim.") else v for k, v in t.items()
        },
    )
    edit_checkpoint(
        run, root / "ck_steps", meta=lambda m: {**m, "sparsity": {**m["sparsity"], "steps": -5}}
    )
    edit_checkpoint(run, root / "ck_history", meta=lambda m: {**m, "history": [{"x": 1}]})
    edit_checkpoint(
        run,
        root / "ck_pgmom",
        meta=lambda m: {
            **m,
            "optim": {
                **m["optim"],
                "param_groups": [{**g, "momentum": 0.5} for g in m["optim"]["param_groups"]],
            },
        },
    )
    edit_checkpoint(
        run, root / "ck_pgidx", meta=lambda m: {**m, "optim": {**m["optim"], "scalars": {"99": {}}}}
    )
    # weights with nan, summary numbers out of a float's range, keys of the wrong type
    nan = copy_run(run, root / "nanweights")
    w, wm = load_tensors(nan / "model.safetensors")
    save_tensors(nan / "model.safetensors", {k: v * float("nan") for k, v in w.items()}, wm)
    copy_run(
        run,
        root / "bigtop1",
        summary_json=json.dumps(summary)[:-1] + ', "top1": 1' + "0" * 400 + "}",
    )
    copy_run(run, root / "scopeint", summary_json=json.dumps({**summary, "scope": 5}))
    rows = [{**r, "structure": "block:5x5"} for r in summary["layers"]]
    copy_run(run, root / "nofit", summary_json=json.dumps({**summary, "layers": rows}))
    rows = [{**r, "structure": "windw"} for r in summary["layers"]]
    copy_run(run, root / "unkstruct", summary_json=json.dumps({**summary, "layers": rows}))
    # a run stopped after epoch 1 of 2
    with pytest.MonkeyPatch.context() as mp:
        real = runfiles.save_checkpoint

        def stop_after_one(out, model, opt, sp, epoch, *rest):
            real(out, model, opt, sp, epoch, *rest)
            if epoch == 1:
                raise KeyboardInterrupt

        mp.setattr(runfiles, "save_checkpoint", stop_after_one)
        half = ["--recipe", recipe, "--out", root / "half", "--set", "train.epochs=2"]
        assert train_cli(*half) == 130
    # a sweep whose point was trained with another recipe than the one asked now
    (root / "sw").mkdir()
    shutil.copytree(run, root / "sw" / "campfire-fine-0.5")
    (root / "afile").write_text("a file")
    (root / "adir").mkdir()
    (root / "dangling").symlink_to(root / "nowhere" / "x")
    (root / "nonrun").mkdir()
    (root / "nonrun" / "keep.txt").write_text("precious")
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Refusals come before any training or evaluation."""

    def forbidden(*args, **kwargs):
        raise AssertionError("training or evaluation ran before the refusal")

    monkeypatch.setattr("sparsegrain.train.loop.train_epoch", forbidden)
    monkeypatch.setattr("sparsegrain.analysis.analyze.evaluate", forbidden)
    monkeypatch.setattr("sparsegrain.analysis.accuracy.evaluate", forbidden)


T = ["train", "--recipe", "{root}/tiny.yaml", "--out"]
A = ["analyze", "--run", "{root}/run", "--no-progress"]
E = ["export", "--run", "{root}/run", "--out"]
S = ["sweep", "--recipe", "{root}/tiny.yaml", "--out"]
CASES = [
    # a run's own files and the files a command reads are never written over without --force
    (E + ["{root}/run/model.safetensors"], "is model.safetensors, which this command reads"),
    (E + ["{root}/run/summary.json"], "give --force to replace it"),
    (E + ["{root}/other/masks.safetensors"], "is the masks.safetensors of the run in"),
    (E + ["{root}/other/checkpoint.safetensors"], "--force"),
    (E + ["{root}/other/recipe.yaml", "--format", "compressed"], "is the recipe.yaml of the run"),
    (A + ["--out", "{root}/run/summary.json"], "is summary.json, which this command reads"),
    (A + ["--out", "{root}/other/analysis.json"], "is the analysis.json of the run in"),
    (A + ["--out", "{root}/other/metrics.jsonl"], "--force"),
    (
        [
            "analyze",
            "--weights",
            "{root}/run/model.safetensors",
            "--out",
            "{root}/run/model.safetensors",
        ],
        "is model.safetensors, which this command reads",
    ),  # fmt: skip
    (S + ["{root}/run"] + POINT, "is a run directory"),
    (T + ["{root}/run"], "directory is not empty"),
    (T + ["{root}/nonrun", "--overwrite"], "holds no sparsegrain run (keep.txt)"),
    # paths: a file where a directory goes, the reverse, a file on the way, a dangling link
    (E + ["{root}/adir"], "--out {root}/adir: is a directory; give a file path"),
    (E + ["{root}/afile/x.safetensors"], "{root}/afile is a file, not a directory"),
    (E + ["{root}/dangling"], "is a dangling symbolic link"),
    (E + ["{root}/dangling/x"], "is a dangling symbolic link"),
    (A + ["--out", "{root}/adir"], "is a directory; give a file path"),
    (A + ["--out", "{root}/afile/a.json"], "is a file, not a directory"),
    (A + ["--out", "{root}/dangling"], "dangling symbolic link"),
    (["report", "{root}/run", "--out", "{root}/afile"], "exists and is not a directory"),
    (["report", "{root}/run", "--out", "{root}/afile/r"], "is a file, not a directory"),
    (["report", "{root}/run", "--out", "{root}/dangling"], "dangling symbolic link"),
    (S + ["{root}/afile"] + POINT, "--out {root}/afile: exists and is not a directory"),
    (S + ["{root}/afile/sw"] + POINT, "is a file, not a directory"),
    (S + ["{root}/dangling"] + POINT, "dangling symbolic link"),
    (T + ["{root}/afile"], "--out {root}/afile: exists and is not a directory"),
    (T + ["{root}/afile/run"], "{root}/afile is a file, not a directory"),
    (T + ["{root}/dangling"], "is a dangling symbolic link"),
    (T + ["{root}/dangling/run"], "is a dangling symbolic link"),
    # checkpoints read back: the file and the key
    (["train", "--out", "{root}/ck_nohistory", "--resume"], "no key 'history' in its metadata"),
    (["train", "--out", "{root}/ck_negative", "--resume"], "'epoch' is -1, must be >= 0"),
    (["train", "--out", "{root}/ck_beyond", "--resume"], "beyond this run's train.epochs 1"),
    (["train", "--out", "{root}/ck_sparsity", "--resume"], "'sparsity' must be an object"),
    (["train", "--out", "{root}/ck_optim", "--resume"], "'optim.param_groups' is missing"),
    (["train", "--out", "{root}/ck_notobj", "--resume"], "corrupt metadata (not a JSON object)"),
    (["train", "--out", "{root}/ck_norng", "--resume"], "no tensor 'rng.torch'"),
    (
        ["train", "--out", "{root}/ck_mask", "--resume"],
        "ck_mask/checkpoint.safetensors: tensor 'sparsity.masks/fc1' is torch.bool [3, 3], "
        "this run's is torch.bool [32, 64]",
    ),
    (
        ["train", "--out", "{root}/ck_momentum", "--resume"],
        "'optim.0.momentum_buffer' is torch.float32 [1], its parameter is",
    ),
    (
        ["train", "--out", "{root}/ck_optidx", "--resume"],
        "'optim.999.momentum_buffer' names no parameter",
    ),
    (
        ["train", "--out", "{root}/ck_floatmask", "--resume"],
        "is torch.float32 [10, 32], this run's is torch.bool",
    ),
    (["train", "--out", "{root}/ck_nan", "--resume"], "'fc1.bias' holds nan or inf"),
    (["train", "--out", "{root}/ck_infmom", "--resume"], "holds nan or inf"),
    (["train", "--out", "{root}/ck_steps", "--resume"], "'sparsity.steps' is -5"),
    (["train", "--out", "{root}/ck_history", "--resume"], "'history[0]' must be epoch 1's metrics"),
    (["train", "--out", "{root}/ck_pgmom", "--resume"], "'optim.param_groups[0].momentum' is 0.5"),
    (["train", "--out", "{root}/ck_pgidx", "--resume"], "'optim.scalars' names parameter '99'"),
    # weights that hold nan, by every command that reads them
    (["eval", "--run", "{root}/nanweights"], "holds nan or inf; the weights are corrupt"),
    (["analyze", "--run", "{root}/nanweights"], "holds nan or inf"),
    (
        ["export", "--run", "{root}/nanweights", "--out", "{root}/x.st", "--compact"],
        "holds nan or inf",
    ),
    (T + ["{root}/new", "--init", "{root}/nanweights"], "holds nan or inf"),
    # summary.json read back, by every command that reads them
    (
        ["report", "{root}/bigtop1", "--out", "{root}/rep"],
        "'top1' must be a finite number, got int",
    ),
    (["report", "{root}/scopeint", "--out", "{root}/rep"], "'scope' must be a string, got int"),
    (["analyze", "--run", "{root}/nofit"], "'layers[0].structure': block:5x5 does not fit"),
    (
        ["export", "--run", "{root}/nofit", "--out", "{root}/x.sgc", "--format", "compressed"],
        "does not fit the layer's shape",
    ),
    (["analyze", "--run", "{root}/unkstruct"], "'layers[0].structure': unknown structure 'windw'"),
    # a run's lock file and its not yet started new run are never an output
    (E + ["{root}/run/.sparsegrain-new/x.safetensors"], "belongs to the run in {root}/run"),
    (E + ["{root}/run/.sparsegrain.lock", "--force"], "belongs to the run in {root}/run"),
    (
        ["report", "{root}/run", "--out", "{root}/run/.sparsegrain-new"],
        "its next writer removes it",
    ),
    # summary.json and analysis.json read back, by every command that reads them
    (["report", "{root}/trsum", "--out", "{root}/rep"], "trsum/summary.json: truncated"),
    (["report", "{root}/listsum", "--out", "{root}/rep"], "expected a JSON object, got list"),
    (["report", "{root}/nokey", "--out", "{root}/rep"], "nokey/summary.json: no key 'top1'"),
    (
        ["report", "{root}/notop1", "--out", "{root}/rep"],
        "'top1' must be a finite number, got NoneType",
    ),
    (["report", "{root}/nostruct", "--out", "{root}/rep"], "no key 'layers[0].achieved'"),
    (["report", "{root}/badanalysis", "--out", "{root}/rep"], "analysis.json: truncated"),
    (["report", "{root}/thinanalysis", "--out", "{root}/rep"], "no key 'accelerator.total.weight'"),
    (["report", "{root}/run", "{root}/run", "--out", "{root}/rep"], "two runs are named 'run'"),
    (["analyze", "--run", "{root}/trsum"], "trsum/summary.json: truncated or not JSON"),
    (["analyze", "--run", "{root}/listsum"], "expected a JSON object"),
    (["analyze", "--run", "{root}/nolayers"], "nolayers/summary.json: no key 'layers'"),
    (["analyze", "--run", "{root}/nostruct"], "no key 'layers[0].structure'"),
    (
        ["export", "--run", "{root}/trsum", "--out", "{root}/x.sgc", "--format", "compressed"],
        "trsum/summary.json: truncated or not JSON",
    ),  # fmt: skip
    (
        ["export", "--run", "{root}/nolayers", "--out", "{root}/x.sgc", "--format", "compressed"],
        "no key 'layers'",
    ),  # fmt: skip
    (["export", "--run", "{root}/noweights", "--out", "{root}/x"], "no model.safetensors"),
    # analyze: every flag checked before any evaluation, named as given
    (
        A + ["--pgd-steps", "0", "--attacks", "pgd"],
        "--pgd-steps: must be an integer in [1, 10000], got 0",
    ),
    (A + ["--attacks", "fgsm", "--epsilons", "nan"], "--epsilons: expected numbers in [0, 1]"),
    (A + ["--attacks", "fgsm", "--epsilons", ","], "--epsilons: give at least one value"),
    (A + ["--max-batches", "0", "--sensitivity"], "--max-batches: must be an integer >= 1"),
    (A + ["--sensitivity", "--sens-structure", "windw"], "--sens-structure: unknown structure"),
    (A + ["--sens-structure", "fine"], "--sens-structure applies to --sensitivity only"),
    (A + ["--value-bits", "0"], "--value-bits: must be an integer in [1, 64], got 0"),
    (A + ["--index-bits", "0"], "--index-bits: must be an integer in [1, 32], got 0"),
    (A + ["--index-bits", "100"], "--index-bits: must be an integer in [1, 32], got 100"),
    (A + ["--attacks", ""], "--attacks: give at least one value"),
    (A + ["--attacks", "fgsm,cw"], "--attacks: unknown attack 'cw'"),
    (A + ["--baseline", "{root}/other"], "--baseline is the dense run attacked beside this one"),
    (A + ["--structure", "kernel"], "--structure applies to --weights only"),
    (A + ["--recipe", "{root}/tiny.yaml"], "--recipe applies to --weights only"),
    (A + ["--attacks", "fgsm", "--baseline", "{root}/missing"], "--baseline {root}/missing: no"),
    (
        ["analyze", "--weights", "{root}/run/model.safetensors", "--structure", "windw"],
        "--structure: unknown structure 'windw'",
    ),
    # other commands' numeric and list flags
    (E + ["{root}/x.sgc", "--format", "compressed", "--bits", "8"], "argument --bits"),
    (S + ["{root}/new", "--structures", ""], "--structures: give at least one value"),
    (S + ["{root}/new", "--methods", " , "], "--methods: give at least one value"),
    (S + ["{root}/new", "--targets", ""], "--targets: give at least one value"),
    (S + ["{root}/new", "--targets", "1"], "--targets: expected numbers in [0, 1)"),
    (S + ["{root}/new", "--targets", "nan"], "--targets: expected numbers in [0, 1)"),
    (S + ["{root}/new", "--methods", "campfir"], "--methods: unknown method 'campfir'"),
    (S + ["{root}/new", "--structures", "windw"], "--structures: unknown structure 'windw'"),
    (S + ["{root}/new", "--jobs", "0"] + POINT, "--jobs: must be an integer >= 1, got 0"),
    (S + ["{root}/new", "--set", "train.epocs=1"] + POINT, "unknown key 'epocs'"),
    (S + ["{root}/sw", "--set", "train.epochs=2"] + POINT, "was trained with train.epochs=1"),
    (["sweep", "--recipe", "{root}/none.yaml", "--out", "{root}/new"], "recipe file not found"),
    # messages name the flag the user gave
    (["eval", "--run", "{root}/noweights"], "--run {root}/noweights: no model.safetensors"),
    (["train", "--out", "{root}/adir", "--resume"], "--out {root}/adir: no recipe.yaml"),
    (["train", "--out", "{root}/half", "--resume", "--init", "{root}/run"], "--init starts"),
    (
        ["train", "--out", "{root}/half", "--resume", "--set", "train.epochs=3"],
        "--resume: train.epochs would change from 2 to 3",
    ),
    (T + ["{root}/new", "--init", "{root}/missing.pt"], "--init weights not found"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_files(env, capsys, no_work, argv, message):
    argv = [a.format(root=env) for a in argv]
    refused(argv, capsys, env, message.format(root=env))


# -- --force ------------------------------------------------------------------------------------


def test_force_replaces_a_run_file_it_was_told_to(env, tmp_path, capsys):
    other = copy_run(env / "other", tmp_path / "other")
    args = ["export", "--run", env / "run", "--out", other / "model.safetensors"]
    code, err = run_cli(args, capsys)
    assert code == 2 and "--force" in err
    assert cli.main([str(a) for a in args] + ["--force"]) == 0
    a, _ = load_tensors(other / "model.safetensors")
    b, _ = load_tensors(env / "run" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


# -- the writer's lock --------------------------------------------------------------------------

HOLDER = """
import fcntl, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since now".encode())
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held(tmp_path):
    """A run directory whose lock another process holds."""
    procs = []

    def hold(directory):
        directory.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory / LOCK)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_second_writer_is_refused_naming_the_holder(env, tmp_path, capsys, held, no_work):
    host = socket.gethostname()
    out = tmp_path / "busy"
    proc = held(out)
    args = ["train", "--recipe", env / "tiny.yaml", "--out", out]
    err = refused(args, capsys, tmp_path, f"pid {proc.pid} on host {host}")
    assert "another sparsegrain process is writing this run" in err
    run = copy_run(env / "run", tmp_path / "run")
    proc = held(run)
    for extra in (["--overwrite"], []):
        args = ["train", "--recipe", env / "tiny.yaml", "--out", run, *extra]
        refused(args, capsys, tmp_path, f"pid {proc.pid} on host {host}")
    refused(["train", "--out", run, "--resume"], capsys, tmp_path, f"pid {proc.pid}")
    refused(["analyze", "--run", run], capsys, tmp_path, f"pid {proc.pid}")  # its analysis.json
    proc.kill()  # a holder that dies lets go: its lock file blocks nobody
    proc.wait(timeout=30)
    assert (run / LOCK).exists()
    assert train_cli("--out", run, "--resume") == 0
    assert not (run / LOCK).exists()


def test_the_lock_is_taken_under_the_run_dir_too(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    with RunLock(out), pytest.raises(Exception, match=f"pid {os.getpid()} on host"):
        RunDir(out).__enter__()


def test_a_stale_lock_blocks_nobody_and_a_run_leaves_no_lock(env, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    (out / LOCK).write_text("pid 999999 on host gone since yesterday\n")
    assert train_cli("--recipe", env / "tiny.yaml", "--out", out) == 0
    assert not (out / LOCK).exists() and not (out / STAGING).exists()
    assert (out / "summary.json").is_file()


# -- --overwrite replaces a run once the new one has started -------------------------------------


@pytest.fixture
def disk_full(monkeypatch):
    """Writes of temporary files (every atomic write) fail with ENOSPC after ``allow`` of them
    succeeded."""

    class Disk:
        allow = 0
        seen: set = set()

    real = os.write

    def write(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith(".tmp"):
            key = (fd, name)
            if key not in Disk.seen:
                Disk.seen.add(key)
            if len(Disk.seen) > Disk.allow:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(io.os, "write", write)
    return Disk


def test_a_failing_overwrite_leaves_the_old_run_byte_identical(env, tmp_path, capsys, disk_full):
    old = copy_run(env / "run", tmp_path / "old")
    (old / "notes.txt").write_text("mine")
    args = ["train", "--recipe", env / "tiny.yaml", "--out", old, "--overwrite"]
    err = refused(args + ["--set", "train.seed=5"], capsys, tmp_path, "No space left on device")
    assert f"cannot write {old / STAGING}" in err
    disk_full.allow = 10**6
    # a new run that fails before it starts: a wrong --init
    w = tmp_path / "w.safetensors"
    save_tensors(w, torch.nn.Linear(3, 3).state_dict(), {})
    refused(args + ["--init", w], capsys, tmp_path, "weights do not fit this model")


def test_a_successful_overwrite_replaces_the_run_and_keeps_other_files(env, tmp_path):
    old = copy_run(env / "run", tmp_path / "old")
    (old / "analysis.json").write_text("{}")  # describes the old weights
    (old / "notes.txt").write_text("mine")
    args = ["--recipe", env / "tiny.yaml", "--out", old, "--overwrite", "--set", "train.seed=9"]
    assert train_cli(*args) == 0
    assert sorted(p.name for p in old.iterdir()) == sorted(
        ["recipe.yaml", "checkpoint.safetensors", "metrics.jsonl", "model.safetensors",
         "masks.safetensors", "summary.json", "notes.txt"]
    )  # fmt: skip
    assert (old / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((old / "recipe.yaml").read_text())["train"]["seed"] == 9
    a, _ = load_tensors(old / "model.safetensors")
    b, _ = load_tensors(env / "run" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_swap_cut_short_is_finished_by_the_next_writer(env, tmp_path):
    new = tmp_path / "new"
    assert train_cli("--recipe", env / "tiny.yaml", "--out", new, "--set", "train.seed=4") == 0
    out = copy_run(env / "run", tmp_path / "out")
    staged = out / STAGING
    staged.mkdir()
    for name in ("recipe.yaml", "checkpoint.safetensors", "metrics.jsonl"):
        shutil.copy(new / name, staged / name)
    plan = {
        "move": ["recipe.yaml", "checkpoint.safetensors", "metrics.jsonl"],
        "drop": ["model.safetensors", "masks.safetensors", "summary.json"],
    }
    (staged / JOURNAL).write_text(json.dumps(plan))
    os.replace(staged / "recipe.yaml", out / "recipe.yaml")  # the swap stopped after one move
    assert train_cli("--out", out, "--resume") == 0
    assert not staged.exists()
    a, _ = load_tensors(out / "model.safetensors")
    b, _ = load_tensors(new / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_an_abandoned_new_run_is_dropped(env, tmp_path):
    out = copy_run(env / "run", tmp_path / "out")
    (out / STAGING).mkdir()
    (out / STAGING / "recipe.yaml").write_text("half")
    assert train_cli("--recipe", env / "tiny.yaml", "--out", out, "--overwrite") == 0
    assert not (out / STAGING).exists()


def test_a_fresh_run_that_cannot_start_leaves_nothing(env, tmp_path, capsys, disk_full):
    out = tmp_path / "fresh" / "run"
    args = ["train", "--recipe", env / "tiny.yaml", "--out", out]
    refused(args, capsys, tmp_path, "No space left on device")
    assert not (tmp_path / "fresh").exists()


def test_disk_full_mid_run_keeps_the_last_checkpoint(env, tmp_path, capsys, disk_full):
    out = tmp_path / "mid"
    disk_full.allow = 4  # recipe, start checkpoint, epoch 1's checkpoint and metrics
    args = ["train", "--recipe", env / "tiny.yaml", "--out", out, "--set", "train.epochs=2"]
    code, err = run_cli(args, capsys)
    assert code == 2 and "cannot write" in err and "No space left on device" in err
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    disk_full.allow = 10**6
    assert train_cli("--out", out, "--resume") == 0


# -- full disk and read-only places for every command that writes --------------------------------


def writers(env, tmp_path):
    """Each writing command with an output that exists already (and must survive)."""
    run = copy_run(env / "run", tmp_path / "run")
    totals = {k: 1 for k in ("weight", "index", "activation", "accumulator", "total")}
    analysis = {"storage": {"total": {"ratio": 2.0}}, "accelerator": {"total": totals}}
    (run / "analysis.json").write_text(json.dumps(analysis))
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.md").write_text("old report\n")
    (tmp_path / "x.safetensors").write_bytes(b"old export")
    return [
        ["analyze", "--run", run, "--no-progress"],
        ["export", "--run", run, "--out", tmp_path / "x.safetensors"],
        ["export", "--run", run, "--out", tmp_path / "x.sgc", "--format", "compressed"],
        ["report", run, "--out", tmp_path / "rep"],
        ["train", "--recipe", env / "tiny.yaml", "--out", run, "--overwrite"],
    ]


def test_a_full_disk_is_one_line_and_loses_nothing(env, tmp_path, capsys, disk_full):
    for args in writers(env, tmp_path):
        err = refused(args, capsys, tmp_path, "No space left on device")
        assert "cannot write" in err and "nothing there was replaced" in err


def test_a_read_only_place_is_refused_before_any_work(env, tmp_path, capsys, monkeypatch):
    cases = writers(env, tmp_path)
    monkeypatch.setattr(io, "_can_write", lambda d: False)  # as a read-only mount answers
    for args in cases:
        refused(args, capsys, tmp_path, "not writable")


def test_a_refused_write_names_the_path(env, tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    cases = writers(env, tmp_path)
    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    for args in cases:
        err = refused(args, capsys, tmp_path, "Read-only file system")
        assert "cannot write" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_directory_for_real(env, tmp_path, capsys):
    cases = writers(env, tmp_path)
    for d in (tmp_path / "run", tmp_path / "rep", tmp_path):
        d.chmod(0o555)
    try:
        for args in cases:
            refused(args, capsys, tmp_path, "not writable")
    finally:
        for d in (tmp_path, tmp_path / "run", tmp_path / "rep"):
            d.chmod(0o755)


# -- the umask ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)], ids=["022", "002"])
def test_files_get_the_umask_mode(env, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert train_cli("--recipe", env / "tiny.yaml", "--out", tmp_path / "run") == 0
        run = tmp_path / "run"
        assert cli.main(["export", "--run", str(run), "--out", str(tmp_path / "x.sgc"),
                         "--format", "compressed"]) == 0  # fmt: skip
        assert cli.main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            io.atomic_write_text(os.path.join(d, "t.txt"), "x")
            assert os.stat(os.path.join(d, "t.txt")).st_mode & 0o777 == mode
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 9
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: mode for p in files}


# -- resume: settings that cannot change a run's numbers may change ------------------------------


def test_resume_may_change_threads_and_progress(env, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(env / "half", half)
    sets = ["--set", "train.threads=2", "--set", "train.progress=false"]
    assert train_cli("--out", half, "--resume", *sets) == 0
    assert len((half / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((half / "recipe.yaml").read_text())["train"]["threads"] == 1


# -- a stopped sweep continues with the same command ---------------------------------------------


def test_a_stopped_sweep_says_how_to_continue(env, tmp_path, capsys, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("sparsegrain.train.sweep.run_point", stop)
    args = ["sweep", "--recipe", env / "tiny.yaml", "--out", tmp_path / "sw", *POINT]
    code, err = run_cli(args, capsys)
    assert code == 130 and "run the same sweep command again" in err and "--resume" not in err


@pytest.mark.slow
def test_the_same_sweep_command_continues_with_other_jobs(env, tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    sets = ["--set", "train.epochs=2", "--set", "train.progress=false"]
    point = ["--set", "sparsity.method=campfire", "--set", "sparsity.structure=fine"]
    done = ["--recipe", env / "tiny.yaml", *sets, *point, "--set", "train.threads=2"]
    assert train_cli("--out", out / "campfire-fine-0.5", *done, "--set", "sparsity.target=0.5") == 0
    with pytest.MonkeyPatch.context() as mp:  # the second point stopped after epoch 1
        real = runfiles.save_checkpoint

        def stop_after_one(o, model, opt, sp, epoch, *rest):
            real(o, model, opt, sp, epoch, *rest)
            if epoch == 1:
                raise KeyboardInterrupt

        mp.setattr(runfiles, "save_checkpoint", stop_after_one)
        stopped = out / "campfire-fine-0.7"
        assert train_cli("--out", stopped, *done, "--set", "sparsity.target=0.7") == 130
    capsys.readouterr()
    args = ["sweep", "--recipe", env / "tiny.yaml", "--out", out, "--methods", "campfire",
            "--structures", "fine", "--targets", "0.5,0.7", "--jobs", "2", "--set",
            "train.epochs=2"]  # fmt: skip
    assert cli.main([str(a) for a in args]) == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "campfire-fine-0.5" in table and "campfire-fine-0.7" in table
    assert "resuming" in (out / "campfire-fine-0.7.log").read_text()
    assert len((stopped / "metrics.jsonl").read_text().splitlines()) == 2


# -- the mechanisms, one by one -------------------------------------------------------------------


def test_a_write_through_a_link_keeps_the_link(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    io.atomic_write_text(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "real.json").read_text() == "new"


def test_any_os_error_is_one_line_naming_the_path(capsys, monkeypatch):
    def fails(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/some/where.log")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, fails))
    code, err = run_cli(["report", "x"], capsys)
    assert code == 2 and err == "sparsegrain: error: /some/where.log: Permission denied"


def _with_func(parser, func):
    class P:
        def parse_args(self, argv):
            args = parser.parse_args(argv)
            args.func = func
            return args

    return P()


def test_several_lines_become_one():
    text = "mask of 'fc1':\n  expected [3, 3]\n  got      [4, 4]\n"
    assert cli.one_line(text) == "mask of 'fc1': expected [3, 3]; got [4, 4]"
    assert cli.one_line("one line") == "one line"
