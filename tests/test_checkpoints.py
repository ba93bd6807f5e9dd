"""Checkpoint import: format detection, restricted unpickling of MMDetection's meta, and clear errors."""
from __future__ import annotations

import builtins
import io
import os
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch

from scnet import build_model
from scnet.checkpoints import WeightsError, load_weights, save_weights
from scnet.checkpoints.mmdet_keys import UnmappedKeyError, mmdet_to_ours

SMOKE = dict(num_classes=3, num_semantic_classes=4)


def test_native_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("scnet_r18_smoke", **SMOKE)
    path = save_weights(tmp_path / "m.pth", model, iteration=7)
    other = build_model("scnet_r18_smoke", **SMOKE)
    meta = load_weights(other, path)
    assert meta["iteration"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


def test_checkpoint_of_another_architecture_names_the_right_preset(tmp_path):
    model = build_model("scnet_r18_smoke", **SMOKE)
    path = save_weights(tmp_path / "m.pth", model, preset="scnet_r18_smoke")
    with pytest.raises(WeightsError, match=r"try --preset scnet_r18_smoke"):
        load_weights(build_model("htc_r18_smoke", **SMOKE), path, preset_name="htc_r18_smoke")


def test_missing_and_extra_tensors_are_listed(tmp_path):
    model = build_model("mask_rcnn_r18_smoke", **SMOKE)
    state = model.state_dict()
    state.pop("rpn.conv.weight")
    state["rpn.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as err:
        load_weights(model, tmp_path / "broken.pth")
    message = str(err.value)
    assert "1 tensor(s) missing" in message and "rpn.conv.weight" in message
    assert "1 unexpected" in message and "rpn.extra.weight" in message


def test_wrong_class_count_is_a_shape_error(tmp_path):
    path = save_weights(tmp_path / "m.pth", build_model("mask_rcnn_r18_smoke", **SMOKE))
    with pytest.raises(WeightsError, match="of another shape"):
        load_weights(build_model("mask_rcnn_r18_smoke", num_classes=5), path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    model = build_model("mask_rcnn_r18_smoke", **SMOKE)
    with pytest.raises(WeightsError, match="could not be read"):
        load_weights(model, bad)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(model, tmp_path / "absent.pth")


def test_mmdet_meta_with_unimportable_classes_loads(tmp_path, monkeypatch):
    """MMDetection pickles mmengine objects into `meta`; loading must not need them installed."""
    package = tmp_path / "fake_mmengine"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        class ConfigDict(dict):
            pass
        class HistoryBuffer:
            def __init__(self):
                self.values = [1, 2, 3]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_mmengine  # noqa: F401  (only importable inside this test)

    model = build_model("mask_rcnn_r18_smoke", **SMOKE)
    mm_state = {}
    renames = {
        "neck.lateral.": "neck.lateral_convs.", "neck.output.": "neck.fpn_convs.", "rpn.conv.": "rpn_head.rpn_conv.",
        "rpn.objectness.": "rpn_head.rpn_cls.", "rpn.deltas.": "rpn_head.rpn_reg.",
    }
    for name, tensor in model.state_dict().items():
        mm = name
        for ours, theirs in renames.items():
            if name.startswith(ours):
                mm = theirs + name[len(ours):]
                if theirs.startswith("neck."):
                    head, tail = mm.rsplit(".", 1)
                    mm = f"{head}.conv.{tail}"
        if name.startswith("roi_heads.box_heads.0."):
            mm = "roi_head.bbox_head." + name.split(".", 3)[3].replace("fcs.", "shared_fcs.") \
                .replace("classifier.", "fc_cls.").replace("regressor.", "fc_reg.")
        if name.startswith("roi_heads.mask_heads.0."):
            mm = "roi_head.mask_head." + name.split(".", 3)[3].replace("logits.", "conv_logits.")
        assert mmdet_to_ours(mm) == name
        mm_state[mm] = tensor
    payload = {"state_dict": mm_state,
               "meta": {"cfg": fake_mmengine.ConfigDict(a=1), "hist": fake_mmengine.HistoryBuffer(),
                        "log": np.arange(3.0), "lr": np.float64(0.02), "classes": ("a", "b"), "ids": {1, 2}}}
    path = tmp_path / "mmdet.pth"
    torch.save(payload, path)
    monkeypatch.delitem(sys.modules, "fake_mmengine")
    monkeypatch.syspath_prepend(str(tmp_path / "nowhere"))
    (package / "__init__.py").unlink()  # now truly unimportable
    fresh = build_model("mask_rcnn_r18_smoke", **SMOKE)
    meta = load_weights(fresh, path, format="auto")
    assert "not loaded: fake_mmengine.HistoryBuffer" in repr(meta["hist"])
    assert meta["cfg"].items == {"a": 1}  # a dict subclass keeps its items as data
    # numpy objects are inert placeholders too: the loader admits only what a checkpoint needs
    assert repr(meta["log"]).startswith("<not loaded: numpy") and repr(meta["lr"]).startswith("<not loaded: numpy")
    assert meta["classes"] == ("a", "b") and meta["ids"] == {1, 2}
    with pytest.raises((ModuleNotFoundError, pickle.UnpicklingError, AttributeError)):
        torch.load(path, weights_only=False)


def test_unknown_mmdet_name_is_refused():
    with pytest.raises(UnmappedKeyError):
        mmdet_to_ours("roi_head.point_head.fc.weight")


# ------------------------------------------------------------------------ untrusted files run nothing

class _Payload:
    """Pickles as a call of `function(argument)`: what a crafted checkpoint would run on load."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _payloads(target):
    return {
        "exec": _Payload(builtins.exec, f"open({str(target)!r}, 'w').write('pwned')"),
        "eval": _Payload(builtins.eval, f"open({str(target)!r}, 'w').write('pwned')"),
        "system": _Payload(os.system, f"touch {target}"),
    }


@pytest.mark.parametrize("kind", ["exec", "eval", "system"])
def test_a_crafted_checkpoint_runs_no_code(kind, tmp_path):
    target = tmp_path / f"created_by_{kind}"
    payload = _payloads(target)[kind]
    # The payload is real: an ordinary unpickler runs it.
    pickle.loads(pickle.dumps(payload))
    assert target.exists()
    target.unlink()

    model = build_model("mask_rcnn_r18_smoke", **SMOKE)
    zipped = tmp_path / "zipped.pth"
    torch.save({"format": "scnet-native-1", "model": model.state_dict(), "preset": "mask_rcnn_r18_smoke",
                "config": model.config.to_dict(), "meta": {"hook": payload}}, zipped)
    meta = load_weights(build_model("mask_rcnn_r18_smoke", **SMOKE), zipped)
    assert not target.exists()
    assert repr(meta["meta"]["hook"]).startswith("<not loaded: ")  # an inert placeholder, as data

    plain = tmp_path / "plain.pth"  # a bare pickle, read through torch.load's legacy path
    plain.write_bytes(pickle.dumps({"state_dict": {}, "meta": payload}, protocol=2))
    with pytest.raises(WeightsError, match="could not be read as a PyTorch checkpoint") as err:
        load_weights(model, plain)
    assert not target.exists()
    assert "\n" not in str(err.value)


def test_state_cannot_be_set_on_an_allowed_class(tmp_path):
    """BUILD on a class would rewire an allowed type (here torch.Tensor.__repr__) for the whole process."""
    crafted = (b"\x80\x02ctorch\nTensor\nq\x00N}q\x01X\x08\x00\x00\x00__repr__q\x02"
               b"ctorch\nSize\nq\x03s\x86q\x04b.")
    from scnet.checkpoints import restricted_pickle

    stream = io.BytesIO(crafted)
    with pytest.raises(pickle.UnpicklingError, match="sets the state of"):
        restricted_pickle.Unpickler(stream, remaining=lambda: len(crafted) - stream.tell()).load()
    assert torch.Tensor.__repr__ is not torch.Size
    path = tmp_path / "crafted.pth"
    path.write_bytes(crafted)
    with pytest.raises(WeightsError):
        load_weights(build_model("mask_rcnn_r18_smoke", **SMOKE), path)
    assert torch.Tensor.__repr__ is not torch.Size


def test_placeholders_keep_data_and_call_nothing():
    from scnet.checkpoints.restricted_pickle import Placeholder, placeholder_for

    cls = placeholder_for("subprocess.call")
    assert cls is placeholder_for("subprocess.call") and issubclass(cls, Placeholder)
    made = cls(["rm", "-rf", "/"], shell=True)
    assert made.args == (["rm", "-rf", "/"],) and made.kwargs == {"shell": True}
    made.__setstate__({"x": 1})
    made["k"] = "v"
    made.extend([1, 2])
    assert (made.state, made.items, made.elements) == ({"x": 1}, {"k": "v"}, [1, 2])
    with pytest.raises(TypeError):
        made()  # an instance is not callable: a REDUCE on it fails instead of running anything
