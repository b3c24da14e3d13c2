"""FGSM / PGD accuracy: pixel-space ball, exactness at eps 0, strength, determinism, restoration."""

import pytest
import torch
from torch import nn

from sparsegrain.analysis.accuracy import evaluate
from sparsegrain.analysis.robustness import (
    attack_accuracy,
    dataset_norm,
    loader_norm,
    robustness_table,
)
from sparsegrain.core.errors import ConfigError
from sparsegrain.data.catalog import DATASETS
from sparsegrain.data.loader import Normalize, TensorLoader

MEAN, STD = (0.5,), (0.25,)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs as uint8 1x8x8 images: class 0 around grey 0.35, class 1 around 0.65,
    with a left/right brightness tilt so the classes are not told apart by the mean alone."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    tilt = torch.linspace(-0.05, 0.05, 8).view(1, 1, 1, 8)
    centre = torch.where(y == 1, 0.65, 0.35).view(n, 1, 1, 1) + tilt * (2 * y - 1).view(n, 1, 1, 1)
    p = (centre + 0.12 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return (p * 255).round().to(torch.uint8), y


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def make_loader(n: int, seed: int, batch_size: int = 64) -> TensorLoader:
    x, y = blobs(n, seed)
    norm = Normalize(mean=MEAN, std=STD)
    return TensorLoader(x, y, batch_size=batch_size, train=False, normalize=norm)


@pytest.fixture(scope="module")
def trained():
    """TinyNet trained full-batch for 300 Adam steps on 512 blob images (well under a second)."""
    torch.manual_seed(0)
    model = TinyNet()
    x, y = blobs(512, seed=1)
    x = Normalize(mean=MEAN, std=STD)(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def test_loader():
    return make_loader(192, seed=2)


class Recorder(nn.Module):
    """Wraps a model and keeps a copy of every input batch it is given."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def test_trained_model_is_accurate(trained, test_loader):
    assert evaluate(trained, test_loader)["top1"] > 95


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_eps_zero_is_clean_accuracy_exactly(trained, test_loader, attack):
    clean = evaluate(trained, test_loader)["top1"]
    acc = attack_accuracy(trained, test_loader, attack=attack, epsilons=[0.0], mean=MEAN, std=STD)
    assert acc == {0.0: clean}


def test_pgd_at_least_as_strong_as_fgsm(trained, test_loader):
    eps = [0.05, 0.1, 0.15, 0.2]
    common = dict(epsilons=eps, mean=MEAN, std=STD)
    fgsm = attack_accuracy(trained, test_loader, attack="fgsm", **common)
    pgd = attack_accuracy(trained, test_loader, attack="pgd", steps=10, **common)
    clean = evaluate(trained, test_loader)["top1"]
    assert list(pgd) == eps
    for e in eps:
        assert pgd[e] <= fgsm[e] <= clean
    assert fgsm[0.2] < clean - 20  # the attacks really bite at the largest epsilon
    assert pgd[0.2] < fgsm[0.2]


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_perturbation_stays_in_pixel_ball_and_image_range(trained, attack):
    loader = make_loader(64, seed=3)  # one batch: every recorded input is that batch, attacked
    ((x_clean, _),) = list(loader)
    clean_pixels = x_clean * STD[0] + MEAN[0]
    eps = 0.1
    rec = Recorder(trained)
    attack_accuracy(rec, loader, attack=attack, epsilons=[eps], mean=MEAN, std=STD, steps=5)
    assert len(rec.inputs) == (2 if attack == "fgsm" else 6)
    worst = 0.0
    for x in rec.inputs:
        pixels = x * STD[0] + MEAN[0]
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
        worst = max(worst, float((pixels - clean_pixels).abs().max()))
    # eps is in pixel units: the perturbation reaches eps, not eps * std (0.025) or eps / std (0.4)
    assert worst == pytest.approx(eps, abs=1e-6)


def test_pgd_is_deterministic_with_seed(trained):
    loader = make_loader(64, seed=3)
    runs = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 1)):
        rec = Recorder(trained)
        acc = attack_accuracy(
            rec, loader, attack="pgd", epsilons=[0.1], mean=MEAN, std=STD, steps=3, seed=seed
        )
        runs[key] = (acc, rec.inputs)
    assert runs["a"][0] == runs["b"][0]
    assert all(torch.equal(p, q) for p, q in zip(runs["a"][1], runs["b"][1], strict=True))
    assert not torch.equal(runs["a"][1][0], runs["c"][1][0])  # another random start


def test_without_random_start_pgd_starts_at_the_clean_image(trained):
    loader = make_loader(64, seed=3)
    ((x_clean, _),) = list(loader)
    rec = Recorder(trained)
    attack_accuracy(
        rec, loader, attack="pgd", epsilons=[0.1], mean=MEAN, std=STD, steps=2, random_start=False
    )
    assert torch.equal(rec.inputs[0], x_clean)


def test_model_state_mode_and_grad_flags_are_restored(trained, test_loader):
    model = TinyNet()
    model.load_state_dict(trained.state_dict())
    model.train()
    model.bn.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack_accuracy(model, test_loader, attack="pgd", epsilons=[0.1], mean=MEAN, std=STD, steps=2)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True, True, True]
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()  # BN running statistics untouched: the attack ran in eval mode
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_mean_std_default_to_the_loader(trained, test_loader):
    assert loader_norm(test_loader) == (MEAN, STD)
    explicit = attack_accuracy(
        trained, test_loader, attack="fgsm", epsilons=[0.1], mean=MEAN, std=STD
    )
    assert attack_accuracy(trained, test_loader, attack="fgsm", epsilons=[0.1]) == explicit


def test_max_batches_limits_the_samples(trained, test_loader):
    clean_first = evaluate(trained, [next(iter(test_loader))])["top1"]
    acc = attack_accuracy(trained, test_loader, attack="fgsm", epsilons=[0], max_batches=1)
    assert acc == {0.0: clean_first}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(attack="fgsn", epsilons=[0.1]), "did you mean 'fgsm'"),
        (dict(attack="pgd", epsilons=[-0.1]), "epsilons"),
        (dict(attack="pgd", epsilons=0.1), "non-empty list"),
        (dict(attack="pgd", epsilons=[0.1], steps=0), "steps"),
        (dict(attack="pgd", epsilons=[0.1], alpha=0), "alpha"),
        (dict(attack="pgd", epsilons=[0.1], mean=(0.5, 0.5, 0.5), std=(0.2,) * 3), "expected: 1"),
        (dict(attack="pgd", epsilons=[0.1], mean=(0.5,)), "both mean= and std="),
        (dict(attack="pgd", epsilons=[0.1], mean=(0.5,), std=(0.0,)), "std must be positive"),
        (dict(attack="pgd", epsilons=[0.1], max_batches=0), "max_batches"),
    ],
)
def test_bad_arguments_raise_value_error(trained, test_loader, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        attack_accuracy(trained, test_loader, **kwargs)


def test_plain_batches_need_explicit_normalization(trained, test_loader):
    with pytest.raises(ValueError, match="dataset_norm"):
        attack_accuracy(trained, list(test_loader), attack="fgsm", epsilons=[0.1])


def _registered_normalize(name):
    """The Normalize a registered dataset's builder closes over (None for the image folder)."""
    cells = DATASETS.get(name).build.__closure__ or ()
    found = [c.cell_contents for c in cells if isinstance(c.cell_contents, Normalize)]
    return found[0] if found else None


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_norm_matches_the_loaders(name):
    if DATASETS.get(name).inputs == "tokens":  # token ids: no pixels to normalize
        with pytest.raises(ConfigError, match="no normalization constants known"):
            dataset_norm(name)
        return
    norm = _registered_normalize(name)
    if name == "imagefolder":
        from sparsegrain.data.imagefolder import IMAGENET_NORMALIZE as norm
    if name == "synthetic":
        from sparsegrain.data.synthetic import SYNTHETIC_NORMALIZE as norm
    assert dataset_norm(name) == (norm.mean, norm.std)


def test_dataset_norm_aliases_and_unknown_names():
    assert dataset_norm("FMNIST") == ((0.2860,), (0.3530,))
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        dataset_norm("cifar1O")


def test_robustness_table_side_by_side():
    results = {
        "dense": {"fgsm": {0.0: 90.0, 2 / 255: 50.0}, "pgd": {2 / 255: 40.5}},
        "sparse": {"fgsm": {2 / 255: 52.25, 0.0: 89.5}},
    }
    assert robustness_table(results).splitlines() == [
        "attack  epsilon           dense  sparse       ",
        "------  ----------------  -----  -------------",
        "fgsm    0                 90.00  89.50 (-0.50)",
        "fgsm    0.007843 (2/255)  50.00  52.25 (+2.25)",
        "pgd     0.007843 (2/255)  40.50  -            ",
    ]
    with pytest.raises(ValueError, match="empty"):
        robustness_table({})


def test_progress_bar_gives_the_same_numbers(trained, test_loader):
    kw = dict(attack="pgd", epsilons=[0.15], steps=3)
    assert attack_accuracy(trained, test_loader, progress=True, **kw) == attack_accuracy(
        trained, test_loader, **kw
    )
