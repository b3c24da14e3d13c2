"""``core.outputs.logits_of``: what the loop and the analyses read from a model's output."""

import importlib.util
from collections import OrderedDict, namedtuple

import pytest
import torch

from sparsegrain.core.errors import ConfigError
from sparsegrain.core.outputs import logits_of

LOGITS = torch.arange(6.0).view(2, 3)
AUX = torch.full((2, 3), -1.0)


class WithLogits:
    """An output object that is not a mapping but has a ``logits`` attribute."""

    def __init__(self, logits):
        self.logits = logits


def test_a_tensor_is_its_own_logits():
    assert logits_of(LOGITS) is LOGITS


def test_a_mapping_gives_its_logits_entry():
    assert logits_of({"loss": torch.tensor(1.0), "logits": LOGITS}) is LOGITS
    assert logits_of(OrderedDict(logits=LOGITS, hidden_states=AUX)) is LOGITS
    assert logits_of(WithLogits(LOGITS)) is LOGITS


def test_a_tuple_gives_its_first_tensor():
    Outputs = namedtuple("Outputs", "logits aux_logits")  # torchvision's Inception v3 in training
    assert logits_of(Outputs(LOGITS, AUX)) is LOGITS
    assert logits_of((None, LOGITS, AUX)) is LOGITS
    assert logits_of([LOGITS, AUX]) is LOGITS


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="no transformers")
def test_a_hugging_face_model_output_gives_its_logits():
    from sparsegrain.models.external import import_transformers

    tr = import_transformers()
    out = tr.modeling_outputs.SequenceClassifierOutput(loss=None, logits=LOGITS)
    assert logits_of(out) is LOGITS


@pytest.mark.parametrize(
    "output, message",
    [
        ({"hidden": AUX}, "the model returned a dict without a 'logits' tensor (keys: 'hidden')"),
        ({"logits": None}, "without a 'logits' tensor (keys: 'logits')"),
        ((None, "x"), "the model returned a tuple, not logits"),
        (3.0, "the model returned a float, not logits"),
    ],
)
def test_no_logits_is_one_line(output, message):
    with pytest.raises(ConfigError) as e:
        logits_of(output)
    assert message in str(e.value) and "\n" not in str(e.value)
