import pickle

import numpy as np
import pytest
import torch
from cifar_fixture import pack, write_cifar

from alexnet_exp.data import DataError, load_cifar, load_dataset, make_synthetic, stratified_split


def test_cifar10_folder_layout_loads(tmp_path):
    sums = write_cifar(tmp_path, "cifar10", train_per_file=40, test_size=30)
    (tx, ty), (sx, sy), names = load_cifar("cifar10", tmp_path, download=False, checksums=sums)
    assert tx.shape == (200, 3, 32, 32) and tx.dtype == np.uint8
    assert ty.shape == (200,) and sx.shape == (30, 3, 32, 32) and len(sy) == 30
    assert names == [f"label_{i}" for i in range(10)]


def test_cifar_pixels_are_read_in_channel_major_order(tmp_path):
    sums = write_cifar(tmp_path, "cifar10", train_per_file=10, test_size=10)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    (tx, _), _, _ = load_cifar("cifar10", tmp_path, download=False, checksums=sums)
    # Official rows: 1024 red values, then green, then blue, each row-major.
    assert tx[0, 1, 0, 5] == raw[b"data"][0][1024 + 5]
    assert tx[0, 2, 3, 0] == raw[b"data"][0][2048 + 3 * 32]


def test_cifar100_archive_is_checked_and_extracted(tmp_path):
    sums = write_cifar(tmp_path / "src", "cifar100", train_per_file=300, test_size=100)
    archive = pack(tmp_path / "src", "cifar100")
    root = tmp_path / "data"
    root.mkdir()
    archive.rename(root / archive.name)
    sums[archive.name] = __import__("cifar_fixture").md5(root / archive.name)
    data = load_dataset("cifar100", root=str(root), checksums=sums, val_fraction=0.2)
    assert data.num_classes == 100
    assert len(data.train_y) + len(data.val_y) == 300 and len(data.test_y) == 100
    assert (root / "cifar-100-python" / "train").is_file()


def test_truncated_file_is_refused_with_its_name(tmp_path):
    sums = write_cifar(tmp_path, "cifar10", train_per_file=20, test_size=20)
    victim = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3.*md5"):
        load_cifar("cifar10", tmp_path, download=False, checksums=sums)
    # Without a checksum the reader still refuses the file whole rather than loading part of it.
    with pytest.raises(DataError, match="data_batch_3.*not a readable CIFAR batch"):
        load_cifar("cifar10", tmp_path, download=False, checksums={})


def test_official_checksums_are_enforced(tmp_path):
    write_cifar(tmp_path, "cifar10", train_per_file=5, test_size=5)
    with pytest.raises(DataError, match="md5"):
        load_cifar("cifar10", tmp_path, download=False)  # the fixture is not the official data


def test_corrupt_archive_is_refused(tmp_path):
    write_cifar(tmp_path / "src", "cifar10", train_per_file=5, test_size=5)
    archive = pack(tmp_path / "src", "cifar10")
    (tmp_path / archive.name).write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_cifar("cifar10", tmp_path, download=False, checksums={})


def test_pickle_with_code_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    write_cifar(tmp_path, "cifar10", train_per_file=5, test_size=5)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="test_batch.*unexpected object"):
        load_cifar("cifar10", tmp_path, download=False, checksums={})


def test_missing_data_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar("cifar100", tmp_path, download=False)
    assert "cifar-100-python" in str(info.value) and str(tmp_path) in str(info.value)


def test_failed_download_gives_a_clear_error(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # refused at once
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=True)
    message = str(info.value)
    assert "download" in message and "cifar-10-python.tar.gz" in message and "Offline?" in message


def test_stratified_split_is_disjoint_complete_and_proportional():
    labels = np.repeat(np.arange(7), [50, 50, 40, 30, 20, 10, 5])
    kept, held = stratified_split(labels, 41, seed=3)
    assert len(held) == 41 and len(kept) == len(labels) - 41
    assert not set(kept) & set(held)
    assert sorted(np.concatenate([kept, held])) == list(range(len(labels)))
    counts = np.bincount(labels[held], minlength=7)
    expected = np.bincount(labels) * 41 / len(labels)
    assert np.all(np.abs(counts - expected) < 1)
    again, _ = stratified_split(labels, 41, seed=3)
    other, _ = stratified_split(labels, 41, seed=4)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)


def test_validation_split_is_carved_from_training_and_test_is_untouched(tmp_path):
    sums = write_cifar(tmp_path, "cifar10", train_per_file=100, test_size=50)
    (tx, _), (sx, _), _ = load_cifar("cifar10", tmp_path, download=False, checksums=sums)
    data = load_dataset("cifar10", root=str(tmp_path), checksums=sums, val_fraction=0.1)
    assert len(data.val_y) == 50 and len(data.train_y) == 450
    train_rows = {bytes(r) for r in data.train_x.numpy().reshape(450, -1)}
    val_rows = {bytes(r) for r in data.val_x.numpy().reshape(50, -1)}
    assert not train_rows & val_rows
    assert train_rows | val_rows == {bytes(r) for r in tx.reshape(500, -1)}
    assert torch.equal(data.test_x, torch.from_numpy(sx))
    assert np.bincount(data.val_y.numpy(), minlength=10).tolist() == [5] * 10


def test_max_train_and_max_val_take_stratified_subsets():
    data = load_dataset("synthetic", synthetic_train_size=1000, synthetic_test_size=50, max_train=100, max_val=20)
    assert len(data.train_y) == 100 and len(data.val_y) == 20
    assert np.bincount(data.train_y.numpy()).tolist() == [10] * 10


def test_synthetic_is_deterministic_balanced_and_cifar_shaped():
    a, ya = make_synthetic(300, 12, seed=5)
    b, yb = make_synthetic(300, 12, seed=5)
    assert a.shape == (300, 3, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert np.bincount(ya).tolist() == [25] * 12
    assert a.std() > 20  # not a blank image


def test_synthetic_is_not_solved_by_a_linear_model_on_pixels():
    from sklearn.linear_model import RidgeClassifier

    x, y = make_synthetic(3000, 10, seed=0)
    xt, yt = make_synthetic(1000, 10, seed=1)
    clf = RidgeClassifier(alpha=10.0).fit(x.reshape(len(x), -1) / 255.0, y)
    assert clf.score(xt.reshape(len(xt), -1) / 255.0, yt) < 0.3  # chance is 0.1; the CNN test reaches far more


def test_digits_are_real_offline_data_upscaled_to_rgb():
    data = load_dataset("digits")
    assert data.train_x.shape[1:] == (3, 32, 32) and data.num_classes == 10
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 1797
    assert torch.equal(data.train_x[:, 0], data.train_x[:, 2])  # grey replicated
    assert load_dataset("digits", split_seed=1).test_y.tolist() == data.test_y.tolist()  # test split fixed
