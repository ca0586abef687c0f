import pytest
import torch

from absld_core.models import (MODELS, CheckpointError, build_model, count_parameters, load_checkpoint,
                               load_state_dict, model_from_checkpoint, save_checkpoint)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_on_cifar_and_digit_shapes(name):
    kw = {"depth": 16, "width": 4} if name == "wrn" else {}
    m = build_model(name, 10, **kw).eval()
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert build_model(name, 7, in_channels=1, **kw).eval()(torch.rand(2, 1, 8, 8)).shape == (2, 7)


def test_known_parameter_counts():
    assert abs(count_parameters(build_model("wrn", 10, depth=34, width=10)) - 46.16e6) < 0.01e6
    assert abs(count_parameters(build_model("resnet18", 10)) - 11.17e6) < 0.01e6


def test_build_model_errors():
    with pytest.raises(ValueError, match="known models: small_cnn, resnet18"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="depth must be 6n\\+4"):
        build_model("wrn", 10, depth=30)
    with pytest.raises(ValueError, match="both mean and std"):
        build_model("small_cnn", 10, mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small_cnn", 1)


def test_normalisation_inside_model():
    torch.manual_seed(0)
    m = build_model("small_cnn", 10, mean=[0.5] * 3, std=[0.25] * 3).eval()
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(m(x), m.model((x - 0.5) / 0.25))


def test_checkpoint_roundtrip_dataparallel_prefix_and_errors(tmp_path):
    torch.manual_seed(0)
    m = build_model("small_cnn", 10, width=8)
    meta = {"arch": "small_cnn", "num_classes": 10, "in_channels": 3, "width": 8}
    save_checkpoint(tmp_path / "a.pt", m, meta=meta)
    m2, meta2 = model_from_checkpoint(tmp_path / "a.pt")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(m.eval()(x), m2.eval()(x)) and meta2["width"] == 8
    # a bare state dict saved from DataParallel
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "dp.pt")
    m3 = build_model("small_cnn", 10, width=8)
    load_state_dict(m3, load_checkpoint(tmp_path / "dp.pt")["model"])
    assert torch.equal(m3.eval()(x), m.eval()(x))
    # a checkpoint that does not fit names the keys
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*classifier.weight"):
        load_state_dict(build_model("small_cnn", 5, width=8), m.state_dict())
    with pytest.raises(CheckpointError, match=r"missing keys: .*unexpected keys: "):
        load_state_dict(build_model("resnet18", 10), m.state_dict())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save(m.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="does not record its architecture"):
        model_from_checkpoint(tmp_path / "bare.pt")
    m4, _ = model_from_checkpoint(tmp_path / "bare.pt", arch="small_cnn", num_classes=10, width=8)
    assert torch.equal(m4.eval()(x), m.eval()(x))


def test_resnet_channels_scale_the_stages_and_travel_in_the_checkpoint(tmp_path):
    """`channels` sets a ResNet-18's first stage (stages x1, x2, x4, x8): the default is the papers' 64;
    16 has 1/16 of the 3x3 convolution weights; the checkpoint's meta rebuilds the same model."""
    default, narrow = build_model("resnet18", 10), build_model("resnet18", 10, channels=16)
    assert count_parameters(default) == count_parameters(build_model("resnet18", 10, channels=64))
    assert narrow.conv1.out_channels == 16 and narrow.linear.in_features == 128
    convs = lambda m: sum(p.numel() for n, p in m.named_parameters() if p.dim() == 4)  # noqa: E731
    assert convs(narrow) * 16 == pytest.approx(convs(default), rel=0.01)
    assert build_model("preact_resnet18", 10, channels=8).conv1.out_channels == 8
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "r.pt", narrow, meta={"arch": "resnet18", "num_classes": 10, "channels": 16, "width": 16})
    again, meta = model_from_checkpoint(tmp_path / "r.pt")
    x = torch.rand(2, 3, 32, 32)
    assert meta["channels"] == 16 and torch.equal(again.eval()(x), narrow.eval()(x))
    # the other models' sizes are set by width (and depth): channels there is refused with what is allowed
    with pytest.raises(ValueError, match="channels=8 applies to resnet18 and preact_resnet18 only; small_cnn's size is set by width"):
        build_model("small_cnn", 10, channels=8)
    with pytest.raises(ValueError, match="channels=0 is invalid: a positive integer"):
        build_model("resnet18", 10, channels=0)
