"""Two processes with gloo on loopback, for every method: identical masks and final weights on
every rank, and the same masks as one process with the same global batch; a rank that stops
answering is named by the other within ``train.dist_timeout``."""

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
from conftest import train_cli

from sparsegrain.core.dist import SINGLE, DistInfo, collective_failure
from sparsegrain.core.io import load_tensors

pytestmark = pytest.mark.slow  # torchrun with two processes: a few seconds a test

RECIPE = {
    "model": {"name": "mlp_tiny", "input_size": 8},  # no BatchNorm: ranks see the same model
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "test_batch_size": 64,
        "synthetic_train": 256,
        "synthetic_test": 64,
        "image_size": 8,
        "augment": False,
    },
    "train": {
        "epochs": 2,
        "lr": 0.05,
        "progress": False,
        "seed": 0,
        "threads": 1,
        "channels_last": False,
    },
}
METHODS = {
    "campfire": {
        "method": "campfire",
        "structure": "fine",
        "target": 0.6,
        "start": 0.25,
        "end": 1.5,
        "frequency": 2,
        "exclude": [],
    },
    "feather": {"method": "feather", "structure": "fine", "target": 0.6, "end": 1.0, "exclude": []},
    "oneshot": {"method": "oneshot", "structure": "fine", "target": 0.6, "exclude": []},
    "admm": {
        "method": "admm",
        "structure": "fine",
        "target": 0.6,
        "exclude": [],
        "admm_epochs": 1,
        "admm_periods": 1,
        "rho": 0.01,
    },
}


def torchrun_command(*args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sparsegrain",
        "train",
        *map(str, args),
    ]


def torchrun(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        torchrun_command(*args), env=env, capture_output=True, text=True, timeout=240
    )


def workers(launcher: int) -> dict[int, int]:
    """Rank -> process id of the workers torchrun process ``launcher`` started."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            env = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):  # not a process, or one that just ended
            continue
        rank = [kv.split("=", 1)[1] for kv in env if kv.startswith("RANK=")]
        if rank:
            found[int(rank[0])] = int(proc.name)
    return found


def running(pid: int) -> bool:
    """Still running: neither gone nor a zombie its parent has not collected yet."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def failure(proc: subprocess.CompletedProcess) -> str:
    """What the ranks said before torchrun's own summary, which ends stderr."""
    return failure_text(proc.stderr.splitlines())


def failure_text(stderr: list[str]) -> str:
    lines = [ln for ln in stderr if "torch/distributed/" not in ln]
    return "\n".join(lines if len(lines) <= 50 else lines[:40] + ["..."] + lines[-10:])


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    path = root / "dense.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "sparsity": {"method": "dense"}}))
    assert train_cli("--recipe", path, "--out", root / "dense") == 0
    return root


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_agree_with_each_other_and_with_one(dense, method):
    root = dense
    path = root / f"{method}.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "sparsity": METHODS[method]}))
    init = ["--init", root / "dense"] if method in ("oneshot", "admm") else []
    proc = torchrun("--recipe", path, "--out", root / f"{method}-2", *init)
    assert proc.returncode == 0, failure(proc)
    summary = json.loads((root / f"{method}-2" / "summary.json").read_text())
    ranks = summary["ranks"]
    assert ranks["world_size"] == 2
    assert len(set(ranks["mask_checksums"])) == 1
    assert len(set(ranks["weight_checksums"])) == 1
    assert train_cli("--recipe", path, "--out", root / f"{method}-1", *init) == 0
    two, _ = load_tensors(root / f"{method}-2" / "masks.safetensors")
    one, _ = load_tensors(root / f"{method}-1" / "masks.safetensors")
    assert two.keys() == one.keys() and two
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert (
        summary["sparsity"]
        == json.loads((root / f"{method}-1" / "summary.json").read_text())["sparsity"]
    )


def test_resume_with_another_world_size(dense):
    root = dense
    path = root / "campfire.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "sparsity": METHODS["campfire"]}))
    out = root / "resized"
    # one epoch on one process, then the rest on two
    assert train_cli("--recipe", path, "--out", out, "--set", "train.epochs=1") == 0
    (out / "summary.json").unlink()
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    saved["train"]["epochs"] = 2
    (out / "recipe.yaml").write_text(yaml.safe_dump(saved))
    proc = torchrun("--out", out, "--resume")
    assert proc.returncode == 0, failure(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"]["world_size"] == 2 and summary["epochs"] == 2
    assert len(set(summary["ranks"]["mask_checksums"])) == 1


def test_a_rank_that_stops_answering_is_named_by_the_other(tmp_path):
    path = tmp_path / "hang.yaml"
    train = {**RECIPE["train"], "epochs": 1000, "dist_timeout": 2}
    path.write_text(yaml.safe_dump({**RECIPE, "train": train, "sparsity": {"method": "dense"}}))
    out = tmp_path / "hang"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = torchrun_command("--recipe", path, "--out", out)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ranks: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file():  # both ranks are in the epoch loop
            assert proc.poll() is None, failure_text(proc.stderr.read().decode().splitlines())
            assert time.monotonic() < deadline, "no epoch done in 120 s"
            time.sleep(0.01)
        ranks = workers(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGSTOP)  # hangs: alive, its sockets open, answering nothing
        stopped = time.monotonic()
        while running(ranks[0]) and time.monotonic() - stopped < 60:
            time.sleep(0.02)
        waited = time.monotonic() - stopped
        os.kill(ranks[1], signal.SIGCONT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            for pid in ranks.values():
                os.kill(pid, signal.SIGCONT)
            proc.terminate()  # torchrun passes SIGTERM on to its workers
            proc.wait(timeout=60)
    err = proc.stderr.read().decode().splitlines()
    # the collective times out after 2 s, then rank 0 waits up to 2 s for rank 1 to check in
    assert 2 < waited < 10, (waited, err)
    assert proc.returncode != 0
    assert (
        "sparsegrain: stopped: rank 1 stopped answering (Timed out waiting 2000ms for recv "
        "operation to complete; train.dist_timeout is 2 s); resume with --resume"
    ) in err, failure_text(err)
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["epoch"] >= 1


class CheckIns:
    """A store holding the keys ranks set after a failed collective."""

    def __init__(self, *keys):
        self.keys = set(keys)

    def set(self, key, value):
        self.keys.add(key)

    def check(self, keys):
        return all(k in self.keys for k in keys)


def test_a_failed_collective_names_the_ranks_that_never_check_in():
    timeout = "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
    error = RuntimeError(timeout + "200ms for recv operation to complete")
    info = DistInfo(0, 4, owns_group=True, timeout=0.2, store=CheckIns("gave_up/2"))
    assert str(collective_failure(error, info)) == (
        "ranks 1, 3 stopped answering (Timed out waiting 200ms for recv operation to complete; "
        "train.dist_timeout is 0.2 s)"
    )
    closed = RuntimeError(
        "[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1447. "
        "This is typically caused by a remote worker crashing."
    )
    everyone = CheckIns("gave_up/0", "gave_up/2")
    info = DistInfo(1, 3, owns_group=True, timeout=0.2, store=everyone)
    assert str(collective_failure(closed, info)) == (
        "a collective failed on rank 1: Connection closed by peer [127.0.0.1]:1447"
    )
    assert collective_failure(RuntimeError("mat1 and mat2 shapes differ"), info) is None
    assert collective_failure(error, SINGLE) is None
