"""Every user-facing mistake: one line on stderr naming what was wrong and what is allowed,
exit status 2, no traceback, nothing already written lost."""

import gzip
import struct

import pytest
import torch
import yaml
from conftest import train_cli

from sparsegrain import cli
from sparsegrain.core.io import save_tensors

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
}


def idx_files(root, *, magic=0x803, truncate=False):
    """Tiny Fashion-MNIST-layout IDX files (4 train, 2 test images of 28x28)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 4), ("t10k", 2)):
        images = struct.pack(">IIII", magic, n, 28, 28) + bytes(n * 28 * 28)
        labels = struct.pack(">II", 0x801, n) + bytes(n)
        if truncate:
            images = images[:-100]
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "sparsity": {"method": "dense"}}))
    assert train_cli("--recipe", recipe, "--out", root / "run") == 0
    (root / "notyaml.yaml").write_text("model: [1, 2\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    idx_files(root / "badmagic", magic=0x999)
    idx_files(root / "truncated", truncate=True)
    # a truncated and a garbage checkpoint, each in a run directory that could be resumed
    for name, data in (
        ("trunc", (root / "run" / "checkpoint.safetensors").read_bytes()[:200]),
        ("garbage", b"\x00" * 64 + b"not a checkpoint"),
    ):
        d = root / name
        d.mkdir()
        (d / "recipe.yaml").write_text((root / "run" / "recipe.yaml").read_text())
        (d / "checkpoint.safetensors").write_bytes(data)
    other = torch.nn.Linear(3, 3)
    save_tensors(root / "other.safetensors", other.state_dict(), {})

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, root / "evil.pt")
    (root / "nonempty").mkdir()
    (root / "nonempty" / "keep.txt").write_text("precious")
    return root


R = ["train", "--recipe", "{root}/tiny.yaml", "--out", "{root}/new"]
CASES = [
    # recipe sections, keys and values
    (R + ["--set", "trian.epochs=1"], "unknown section 'trian' (did you mean 'train'?)"),
    (R + ["--set", "train.epocs=1"], "train: unknown key 'epocs' (did you mean 'epochs'?)"),
    (R + ["--set", "train.lr=0"], "train.lr: must be in (0, inf], got 0"),
    (R + ["--set", "train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
    (R + ["--set", "train.schedule=cosin"], "did you mean 'cosine'?"),
    (R + ["--set", "train.momentum=1.5"], "train.momentum: must be in [0, 1), got 1.5"),
    (R + ["--set", "train.lr_at_freeze=boost"], "train.freeze_lr: required by lr_at_freeze"),
    (R + ["--set", "model.name=resnet21"], "unknown model 'resnet21'"),
    (R + ["--set", "model.hiden=3"], "has no option 'hiden' (did you mean 'hidden'?)"),
    (R + ["--set", "model.hidden=0"], "option 'hidden'"),
    (R + ["--set", "sparsity.method=campfir"], "did you mean 'campfire'?"),
    (
        R
        + [
            "--set",
            "sparsity.method=campfire",
            "--set",
            "sparsity.target=1",
            "--set",
            "sparsity.end=1",
        ],
        "sparsity.target: must be in [0, 1), got 1",
    ),
    (
        R + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.5"],
        "sparsity.end: required by method 'campfire'",
    ),
    (R + ["--set", "sparsity.structure=windw"], "did you mean 'window'?"),
    (R + ["--set", "sparsity.structure=nm:4:2"], "nm"),
    (R + ["--set", "sparsity.structure=block:0x4"], "block"),
    (R + ["--set", "sparsity.scope=globl"], "did you mean 'global'?"),
    (R + ["--set", "sparsity.score=l3"], "sparsity.score: unknown value 'l3'"),
    (R + ["--set", "sparsity.overrides={{fc: {{targt: 0.1}}}}"], "did you mean 'target'?"),
    (R + ["--set", "sparsity.fallback=dens"], "sparsity.fallback"),
    (R + ["--set", "sparsity.types=[conv, lstm]"], "sparsity.types: unknown value 'lstm'"),
    (
        R
        + [
            "--set",
            "sparsity.method=campfire",
            "--set",
            "sparsity.target=0.5",
            "--set",
            "sparsity.end=1",
            "--set",
            "sparsity.start=2",
        ],
        "sparsity.end: must be >= start",
    ),
    (R + ["--set", "sparsity.method=feather", "--set", "sparsity.p=-1"], "sparsity.p"),
    (R + ["--set", "sparsity.method=admm", "--set", "sparsity.rho=-1"], "sparsity.rho"),
    (R + ["--set", "data.name=fashon_mnist"], "did you mean 'fashion_mnist'?"),
    (R + ["--set", "data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    (R + ["--set", "data.train_subset=1000"], "train_subset"),
    (["train", "--recipe", "{root}/notyaml.yaml", "--out", "{root}/new"], "invalid YAML at line"),
    (
        ["train", "--recipe", "{root}/list.yaml", "--out", "{root}/new"],
        "expected a mapping of sections",
    ),
    (["train", "--recipe", "{root}/none.yaml", "--out", "{root}/new"], "recipe file not found"),
    # --set syntax
    (R + ["--set", "train.lr"], "expected key.sub=value"),
    (R + ["--set", "=3"], "expected key.sub=value"),
    (R + ["--set", "train..lr=3"], "expected key.sub=value"),
    (R + ["--set", "train.lr.x=1"], "train.lr: expected a number, got {'x': 1}"),
    # command line
    (["train", "--recipe", "{root}/tiny.yaml"], "the following arguments are required: --out"),
    (["trian"], "invalid choice: 'trian'"),
    (["list", "model"], "invalid choice: 'model'"),
    (
        ["train", "--recipe", "{root}/tiny.yaml", "--out", "{root}/nonempty"],
        "directory is not empty",
    ),
    (["train", "--out", "{root}/run", "--resume", "--overwrite"], "exclude each other"),
    (["train", "--out", "{root}/new", "--resume"], "no recipe.yaml"),
    (R + ["--init", "{root}/missing.safetensors"], "--init weights not found"),
    (["eval", "--run", "{root}/missing"], "no recipe.yaml"),
    (["analyze", "--run", "{root}/run", "--attacks", "cw"], "unknown attack 'cw'"),
    (["analyze", "--run", "{root}/run", "--epsilons", "2"], "expected numbers in [0, 1]"),
    (["report", "{root}/missing"], "has no summary.json"),
    # data directories and files
    (
        R
        + [
            "--set",
            "data.name=fashion_mnist",
            "--set",
            "data.root={root}/nowhere",
            "--set",
            "model.input_size=28",
            "--set",
            "data.image_size=null",
        ],
        "nowhere",
    ),
    (
        R
        + [
            "--set",
            "data.name=fashion_mnist",
            "--set",
            "data.root={root}/badmagic",
            "--set",
            "model.input_size=28",
            "--set",
            "data.image_size=null",
        ],
        "magic",
    ),
    (
        R
        + [
            "--set",
            "data.name=fashion_mnist",
            "--set",
            "data.root={root}/truncated",
            "--set",
            "model.input_size=28",
            "--set",
            "data.image_size=null",
        ],
        "truncated",
    ),
    # checkpoints and weights
    (["train", "--out", "{root}/trunc", "--resume"], "truncated or not a safetensors file"),
    (["train", "--out", "{root}/garbage", "--resume"], "truncated or not a safetensors file"),
    (R + ["--init", "{root}/other.safetensors"], "weights do not fit this model"),
    (R + ["--init", "{root}/evil.pt"], "not a loadable weights-only state_dict"),
    # structures that do not fit, and method requirements
    (
        R
        + [
            "--set",
            "sparsity.method=campfire",
            "--set",
            "sparsity.structure=window",
            "--set",
            "sparsity.target=0.5",
            "--set",
            "sparsity.end=1",
            "--set",
            "sparsity.exclude=[]",
        ],
        "layer 'fc1' [32, 64]: window needs a kernel larger than 1x1",
    ),
    (
        R
        + [
            "--set",
            "sparsity.method=campfire",
            "--set",
            "sparsity.structure=block:5x5",
            "--set",
            "sparsity.target=0.5",
            "--set",
            "sparsity.end=1",
            "--set",
            "sparsity.exclude=[]",
        ],
        "layer 'fc1' [32, 64]: block:5x5",
    ),
    (
        R
        + [
            "--set",
            "sparsity.method=feather",
            "--set",
            "sparsity.structure=kernel",
            "--set",
            "sparsity.target=0.5",
            "--set",
            "sparsity.exclude=[]",
        ],
        "fine",
    ),
    (R + ["--set", "sparsity.method=oneshot", "--set", "sparsity.target=0.5"], "give --init"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_input(env, capsys, argv, message):
    argv = [a.format(root=env) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert message in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "pwned" not in captured.out
    assert not (env / "new" / "checkpoint.safetensors").exists()
    assert (env / "nonempty" / "keep.txt").read_text() == "precious"
