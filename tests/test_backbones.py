"""Backbones: registered paper networks, timm API parity, local-only weight loading."""
import os
import pickle

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing here may reach the network

import pytest
import timm
import torch
from safetensors.torch import save_file

from models.backbones import ModelError, create_backbone, load_classifier_weights, penultimate


def _randomize_bn(model):
    """Non-trivial running stats, so a round trip that drops buffers would be caught."""
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize('name', ['mnist_cnn', 'mnist_cnn_bn'])
def test_mnist_cnn_shapes_and_api(name):
    model = create_backbone(name, 10).eval()
    assert model.in_chans == 1 and model.num_features == 128 and model.num_classes == 10
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model.forward_features(x).shape == (3, 128)
    assert isinstance(model.get_classifier(), torch.nn.Linear)
    assert model.pretrained_cfg['input_size'] == (1, 28, 28)
    assert isinstance(model.bn1, torch.nn.BatchNorm1d) == (name == 'mnist_cnn_bn')
    model.reset_classifier(4)
    assert model(x).shape == (3, 4) and model.num_classes == 4


def test_mnist_cnn_via_timm_create_model():
    model = timm.create_model('mnist_cnn', num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert 'mnist_cnn' in timm.list_models('mnist*')


def test_mnist_cnn_takes_larger_colour_inputs_and_keeps_28px_exact():
    model = create_backbone('mnist_cnn', 14, in_chans=3).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 14)
    small = create_backbone('mnist_cnn', 10).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():        # the paper's path: the 1x1 map flattened, no pooling in between
        ref = small.fc(small.act(small.bn1(small.fc1(small.features(x).flatten(1)))))
        assert torch.equal(small(x), ref)


def test_cifar_resnet34_stem_and_shape():
    model = create_backbone('cifar_resnet34', 10).eval()
    conv = model.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert conv.out_channels == 64 and isinstance(model.maxpool, torch.nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        # no stem downsampling: 32 / 8 = 4x4 at the last stage
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)


@pytest.mark.parametrize('name,shape', [('mnist_cnn', (4, 1, 28, 28)), ('resnet18', (4, 3, 32, 32))])
def test_penultimate_consistent(name, shape):
    model = create_backbone(name, 7).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        feats, logits = penultimate(model, x)
        assert feats.shape == (4, model.num_features)
        torch.testing.assert_close(model.get_classifier()(feats), logits)
        torch.testing.assert_close(model(x), logits)


@pytest.fixture(scope='module')
def resnet18_1k():
    return _randomize_bn(timm.create_model('resnet18', num_classes=1000)).state_dict()


def _assert_trunk_loaded(model, saved):
    for k, v in model.state_dict().items():
        if not k.startswith('fc.'):
            assert torch.equal(v, saved[k]), k


def test_pretrained_safetensors_fresh_head(tmp_path, resnet18_1k):
    path = tmp_path / 'r18.safetensors'
    save_file({k: v.contiguous() for k, v in resnet18_1k.items()}, str(path))
    model = create_backbone('resnet18', 14, pretrained_file=str(path))
    _assert_trunk_loaded(model, resnet18_1k)
    assert model.num_classes == 14 and model.fc.weight.shape == (14, 512)


def test_pretrained_pth_checkpoint_wrapper(tmp_path, resnet18_1k):
    path = tmp_path / 'r18.pth'
    torch.save({'epoch': 3, 'state_dict': {'module.' + k: v for k, v in resnet18_1k.items()}}, path)
    model = create_backbone('resnet18', 14, pretrained_file=path)
    _assert_trunk_loaded(model, resnet18_1k)


def test_pretrained_mismatch_names_key(tmp_path, resnet18_1k):
    path = tmp_path / 'r18.safetensors'
    save_file({k: v.contiguous() for k, v in resnet18_1k.items()}, str(path))
    with pytest.raises(ModelError, match='layer|conv1|bn1'):
        create_backbone('resnet34', 14, pretrained_file=str(path))
    with pytest.raises(ModelError, match=r"conv1\.weight"):  # 7x7 stem vs 3x3 CIFAR stem
        create_backbone('cifar_resnet34', 14, pretrained_file=str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match='not found'):
        create_backbone('mnist_cnn', 10, pretrained_file=tmp_path / 'nope.safetensors')


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), 'w'))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        # protocol 2: torch's weights-only unpickler rejects newer protocols' opcodes before
        # reaching the GLOBAL, which would make this test pass for the wrong reason
        pickle.dump({'state_dict': _Evil(marker)}, f, protocol=2)
    with pytest.raises(ModelError, match='Unsupported global'):
        create_backbone('mnist_cnn', 10, pretrained_file=path)
    with pytest.raises(ModelError):
        load_classifier_weights(create_backbone('mnist_cnn', 10), path)
    assert not marker.exists()
    with open(path, 'rb') as f:  # control: the file does run code when unpickled unsafely
        pickle.load(f).clear()
    assert marker.exists()
    marker.unlink()
    torch.save({'w': _Evil(marker)}, tmp_path / 'evil2.pt')  # the zip format too
    assert not marker.exists()
    with pytest.raises(ModelError):
        create_backbone('mnist_cnn', 10, pretrained_file=tmp_path / 'evil2.pt')
    assert not marker.exists()


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'no_such_net'"):
        create_backbone('no_such_net', 10)


def test_hub_weights_are_refused_before_timm_is_asked(monkeypatch):
    # pretrained=True would send timm to a model hub; create_backbone must refuse it itself
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm was asked (a hub download)"))
    with pytest.raises(ModelError, match="pass a local file"):
        create_backbone('mnist_cnn', 10, pretrained=True)


def test_load_classifier_weights(tmp_path):
    src = _randomize_bn(create_backbone('mnist_cnn_bn', 14))
    path = tmp_path / 'ce.safetensors'
    save_file(src.state_dict(), str(path))
    with pytest.raises(ModelError, match='checkpoint has 14 classes, model has 10'):
        load_classifier_weights(create_backbone('mnist_cnn_bn', 10), path)
    with pytest.raises(ModelError, match="unexpected key 'bn1"):
        load_classifier_weights(create_backbone('mnist_cnn', 14), path)
    dst = create_backbone('mnist_cnn_bn', 14)
    load_classifier_weights(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_trained_model_loads_with_timm_alone(tmp_path):
    src = _randomize_bn(create_backbone('mnist_cnn', 10))
    path = tmp_path / 'trained.safetensors'
    save_file(src.state_dict(), str(path))
    model = timm.create_model('mnist_cnn', num_classes=10, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))
