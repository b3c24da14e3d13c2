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
    (root / "empty.yaml").write_text("# nothing yet\n")
    (root / "dup.yaml").write_text("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    (root / "alias.yaml").write_text("train: &t {epochs: 1}\ndata: {batch_size: 32}\nmodel: *t\n")
    (root / "deep.yaml").write_text("model: {options: " + "[" * 40 + "]" * 40 + "}\n")
    (root / "intkey.yaml").write_text("train:\n  1: 2\n")
    (root / "big.yaml").write_text("train: {epochs: 1}\n" + "#" * (1 << 20) + "\n")
    (root / "nul.yaml").write_bytes(b"model: {name: mlp_tiny}\x00\n")
    (root / "utf16.yaml").write_bytes("model: {name: mlp_tiny}\n".encode("utf-16"))
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
    # values out of every key's declared bounds (core.validate)
    (R + ["--set", "train.lr=.nan"], "train.lr: expected a finite number, got nan"),
    (R + ["--set", "train.lr=.inf"], "train.lr: expected a finite number, got inf"),
    (R + ["--set", "train.lr=1" + "0" * 400], "train.lr: expected a finite number, got 1000"),
    (
        R + ["--set", "train.seed=18446744073709551616"],
        "train.seed: expected an integer <= 9223372036854775807, got 18446744073709551616",
    ),
    (R + ["--set", "train.threads=100000"], "train.threads: expected an integer <= 1024"),
    (R + ["--set", "train.epochs=1000000000"], "train.epochs: expected an integer <= 100000"),
    (R + ["--set", "train.epochs=true"], "train.epochs: expected an integer, got True"),
    (R + ["--set", "train.gamma=2"], "train.gamma: must be in (0, 1], got 2.0"),
    (R + ["--set", "train.milestones=[1, .nan]"], "train.milestones[1]: expected a finite number"),
    (R + ["--set", 'train.schedule="a\\nb"'], "train.schedule: expected a string of at most"),
    (
        R + ["--set", "model.input_size=100000"],
        "model.input_size: option 'input_size' of model 'mlp_tiny' must be an integer <= 4096",
    ),
    (R + ["--set", "data.batch_size=1000000000"], "data.batch_size must be an integer <= 1048576"),
    (R + ["--set", "data.num_workers=100000"], "data.num_workers must be an integer <= 256"),
    (R + ["--set", "data.image_size=4096"], "data: a synthetic set of (synthetic_train 64"),
    (R + ["--set", "sparsity.target=.nan"], "sparsity.target: expected a finite number, got nan"),
    (
        R + ["--set", "sparsity.method=admm", "--set", "sparsity.rho=.inf"],
        "sparsity.rho: expected a finite number, got inf",
    ),
    (
        R + ["--set", "sparsity.method=feather", "--set", "sparsity.theta=-.inf"],
        "sparsity.theta: expected a finite number, got -inf",
    ),
    (
        R + ["--set", "sparsity.overrides={{fc1: {{target: .nan}}}}"],
        "sparsity.overrides.fc1.target: expected a finite number, got nan",
    ),
    (
        R + ["--set", "sparsity.overrides={{fc1: {{target: 0.1, target: 0.2}}}}"],
        "line 1, column 21: duplicate key 'target' (first given at line 1)",
    ),
    (R + ["--set", "sparsity.frequency=" + "9" * 30], "sparsity.frequency: expected an integer <="),
    # the recipe against the model and the data
    (
        R + ["--set", "model.num_classes=5"],
        "model.num_classes: 5 disagrees with dataset 'synthetic', which has 10 classes",
    ),
    (
        R + ["--set", "model.in_channels=3"],
        "model.in_channels: 3 disagrees with dataset 'synthetic', which has 1 channels",
    ),
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
            "sparsity.overrides={{fc2: {{target: 0.3}}}}",
        ],
        "sparsity.overrides: pattern 'fc2' matches no layer; candidates (conv, linear): fc1, fc",
    ),
    (
        R
        + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.5"]
        + ["--set", "sparsity.end=1", "--set", "sparsity.include=[fc1, 'conv*']"],
        "sparsity.include: pattern 'conv*' matches no layer; candidates (conv, linear): fc1, fc",
    ),
    (
        R
        + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.5"]
        + ["--set", "sparsity.end=1", "--set", "sparsity.exclude=[fc1, 'conv*']"],
        "sparsity.exclude: pattern 'conv*' matches no layer; candidates (conv, linear): fc1, fc",
    ),
    (
        R + ["--set", "sparsity.method=feather", "--set", "sparsity.structure=kernel"],
        "sparsity.structure: method 'feather' supports 'fine' only; got 'kernel'",
    ),
    (
        R + ["--set", "sparsity.method=torch-prune", "--set", "sparsity.fallback=block:1x4"],
        "sparsity.fallback: method 'torch-prune' supports 'fine' only; got 'block:1x4'",
    ),
    # YAML a recipe never needs
    (
        ["train", "--recipe", "{root}/empty.yaml", "--out", "{root}/new"],
        "is empty: no model, data, train or sparsity section",
    ),
    (
        ["train", "--recipe", "{root}/dup.yaml", "--out", "{root}/new"],
        "dup.yaml: line 4, column 3: duplicate key 'lr' (first given at line 2)",
    ),
    (
        ["train", "--recipe", "{root}/alias.yaml", "--out", "{root}/new"],
        "alias.yaml: line 3, column 8: alias *t is not allowed in a recipe",
    ),
    (
        ["train", "--recipe", "{root}/deep.yaml", "--out", "{root}/new"],
        "deep.yaml: line 1, column 32: nested deeper than 16 levels",
    ),
    (
        ["train", "--recipe", "{root}/intkey.yaml", "--out", "{root}/new"],
        "intkey.yaml: line 2, column 3: key 1 is not a string",
    ),
    (
        ["train", "--recipe", "{root}/big.yaml", "--out", "{root}/new"],
        "big.yaml: larger than 1048576 bytes",
    ),
    (
        ["train", "--recipe", "{root}/nul.yaml", "--out", "{root}/new"],
        "nul.yaml: invalid YAML at character 23: special characters are not allowed (U+0000)",
    ),
    (
        ["train", "--recipe", "{root}/utf16.yaml", "--out", "{root}/new"],
        "utf16.yaml: not UTF-8 text (byte 0xff at offset 0)",
    ),
    (
        ["train", "--recipe", "{root}/nonempty", "--out", "{root}/new"],
        "nonempty: is a directory; give a YAML file",
    ),
    # numbers in exponent form are numbers (YAML 1.1 alone reads 1e-4 as a string)
    (R + ["--set", "train.lr=-1e-4"], "train.lr: must be in (0, inf], got -0.0001"),
    (R + ["--set", "train.lr=1e400"], "train.lr: expected a finite number, got inf"),
    (R + ["--set", "data.batch_size=1e3"], "data.batch_size: expected an integer, got 1000.0"),
    # structure parameters are ASCII digits
    (R + ["--set", "sparsity.structure=nm:２:４"], "structure 'nm:２:４': expected nm:N:M"),
    (R + ["--set", "sparsity.structure=combined:０.３"], "expected combined or combined:SPLIT"),
    # a target the structure cannot reach
    (
        R
        + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.7"]
        + ["--set", "sparsity.end=1", "--set", "sparsity.structure=nm:2:4"],
        "sparsity.target: method 'campfire' with structure nm:2:4 reaches at most sparsity 0.5",
    ),
    (
        R
        + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.5"]
        + ["--set", "sparsity.end=1", "--set", "sparsity.structure=window"]
        + ["--set", "sparsity.fallback=nm:3:4"],
        "sparsity.target: method 'campfire' with fallback nm:3:4 reaches at most sparsity 0.25",
    ),
    (
        R
        + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.5"]
        + ["--set", "sparsity.end=1", "--set", "sparsity.overrides={{fc1: {{structure: nm:4:4}}}}"],
        "sparsity.overrides.fc1.target: method 'campfire' with structure nm:4:4 reaches at most",
    ),
    # overrides that would change nothing, or contradict the layer's target
    (
        R
        + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.5"]
        + ["--set", "sparsity.end=1", "--set", "sparsity.overrides={{fc: {{target: 0.3}}}}"],
        "sparsity.overrides: pattern 'fc' matches only layers that are not pruned: fc (excluded",
    ),
    (
        R
        + ["--set", "sparsity.method=campfire", "--set", "sparsity.target=0.5"]
        + ["--set", "sparsity.end=1", "--set", "sparsity.overrides={{fc1: {{initial: 0.9}}}}"],
        "sparsity.overrides.fc1.initial: must be in [0, 0.5] (the target of layer 'fc1'), got 0.9",
    ),
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
    (
        ["analyze", "--run", "{root}/run", "--attacks", "pgd", "--pgd-steps", "1000000000"],
        "--pgd-steps: must be an integer in [1, 10000], got 1000000000",
    ),
    # an empty path would mean the current directory
    (
        ["train", "--recipe", "", "--out", "{root}/new"],
        "argument --recipe: expected a path, got ''",
    ),
    (["train", "--recipe", "{root}/tiny.yaml", "--out", " "], "argument --out: expected a path"),
    (R + ["--init", ""], "argument --init: expected a path, got ''"),
    (["eval", "--run", ""], "argument --run: expected a path, got ''"),
    (["analyze", "--run", "{root}/run", "--out", ""], "argument --out: expected a path"),
    (["report", "{root}/run", "--out", ""], "argument --out: expected a path, got ''"),
    (["export", "--run", "{root}/run", "--out", ""], "argument --out: expected a path, got ''"),
    (["sweep", "--recipe", "{root}/tiny.yaml", "--out", ""], "argument --out: expected a path"),
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
