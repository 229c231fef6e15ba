import numpy as np
import torch

from alexnet_exp.augment import BatchAugmenter, ColorStats, color_stats, pca_color, random_crop, random_flip


def gen(seed):
    return torch.Generator().manual_seed(seed)


def images(n=64, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen(seed), dtype=torch.int64).to(torch.uint8)


def test_crop_offsets_are_drawn_per_image_and_are_translations():
    one = images(1)
    batch = one.expand(256, -1, -1, -1).contiguous()
    out = random_crop(batch, 4, gen(0))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    distinct = {bytes(o.numpy().tobytes()) for o in out}
    assert len(distinct) > 40  # 81 possible offsets; one draw per batch would give 1
    padded = torch.nn.functional.pad(one, (4, 4, 4, 4))[0]
    windows = {bytes(padded[:, dy:dy + 32, dx:dx + 32].numpy().tobytes()) for dy in range(9) for dx in range(9)}
    assert distinct <= windows  # every output is one of the translated windows


def test_flip_is_drawn_per_image_with_probability_one_half():
    one = images(1)
    batch = one.expand(2000, -1, -1, -1)
    out = random_flip(batch, gen(1))
    flipped = (out == one.flip(-1)).flatten(1).all(dim=1)
    kept = (out == one).flatten(1).all(dim=1)
    assert bool((flipped | kept).all())
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_augmentation_is_seeded_and_deterministic():
    stats = color_stats(images(200, seed=3))
    aug = BatchAugmenter(stats=stats, input_size=40, crop_padding=4, flip=True, pca_sigma=0.1)
    x = images(32)
    a, b, c = aug.train(x, gen(7)), aug.train(x, gen(7)), aug.train(x, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (32, 3, 40, 40) and a.dtype == torch.float32


def test_color_stats_match_numpy():
    x = images(100, seed=4)
    stats = color_stats(x, chunk=7)
    px = x.numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255
    np.testing.assert_allclose(stats.mean.numpy(), px.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(stats.std.numpy(), px.std(axis=1), rtol=1e-4)
    vals, vecs = np.linalg.eigh(np.cov(px, bias=True))
    np.testing.assert_allclose(stats.eigvals.numpy(), vals, rtol=1e-3)
    np.testing.assert_allclose(np.abs(stats.eigvecs.numpy()), np.abs(vecs), atol=1e-4)
    # over more images than max_images: the stats of evenly spaced ones (a streamed ImageNet is not read whole)
    sampled = color_stats(x, max_images=10, chunk=3)
    picked = color_stats(x[torch.linspace(0, 99, 10).round().long()])
    assert torch.allclose(sampled.mean, picked.mean) and torch.allclose(sampled.std, picked.std)


def test_pca_colour_shift_has_the_paper_statistics():
    # A known covariance: shifts must be constant per image and distributed as P diag(sigma * lambda) alpha.
    eigvecs = torch.linalg.qr(torch.randn(3, 3, generator=gen(5)))[0]
    eigvals = torch.tensor([0.01, 0.04, 0.2])
    stats = ColorStats(torch.zeros(3), torch.ones(3), eigvals, eigvecs)
    base = torch.zeros(20000, 3, 4, 4)
    out = pca_color(base, stats, sigma=0.1, generator=gen(6))
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # one shift per image, the same on all pixels
    shift = out[:, :, 0, 0].double()
    assert shift.mean(dim=0).abs().max() < 3e-3
    expected_cov = eigvecs.double() @ torch.diag((0.1 * eigvals.double()) ** 2) @ eigvecs.double().T
    torch.testing.assert_close(torch.cov(shift.T), expected_cov, atol=2e-5, rtol=0.05)
    coords = shift @ eigvecs.double()  # back in the eigenbasis: independent, std sigma * lambda
    torch.testing.assert_close(coords.std(dim=0), 0.1 * eigvals.double(), rtol=0.05, atol=1e-6)


def test_dataset_normalisation_gives_zero_mean_unit_std():
    x = images(300, seed=9)
    x[:, 0] //= 2  # channels with different statistics
    aug = BatchAugmenter(stats=color_stats(x), input_size=32, normalize="dataset")
    out = aug.eval(x)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_imagenet_and_none_normalisation_and_eval_is_not_random():
    x = images(8)
    stats = color_stats(x)
    none = BatchAugmenter(stats=stats, input_size=32, normalize="none", crop_padding=4, flip=True)
    assert torch.equal(none.eval(x), x.float() / 255)  # eval: no crop, no flip
    imagenet = BatchAugmenter(stats=stats, input_size=32, normalize="imagenet")
    expected = (x[:, 1].float() / 255 - 0.456) / 0.224
    torch.testing.assert_close(imagenet.eval(x)[:, 1], expected)


def test_resize_to_paper_input():
    aug = BatchAugmenter(stats=color_stats(images(4)), input_size=227, normalize="none")
    out = aug.eval(images(2))
    assert out.shape == (2, 3, 227, 227)
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0


def test_pre_resize_resizes_twice_without_cropping():
    """The CIFAR-100 notebook's 'random center crop': Resize(230) then Resize(227), in training and evaluation."""
    import torch

    from alexnet_exp.augment import BatchAugmenter, color_stats

    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    stats = color_stats(images)
    twice = BatchAugmenter(stats=stats, input_size=227, normalize="none", pre_resize=230, crop_padding=0, flip=False)
    once = BatchAugmenter(stats=stats, input_size=227, normalize="none")
    a, b = twice.eval(images), once.eval(images)
    assert a.shape == b.shape == (4, 3, 227, 227)
    assert not torch.equal(a, b) and (a - b).abs().mean() < 0.05  # a slightly softer image, the same content
    assert torch.equal(twice.train(images, torch.Generator().manual_seed(0)), a)  # no crop, no flip: no randomness


def test_cifar10_constants_normalisation():
    import torch

    from alexnet_exp.augment import BatchAugmenter, color_stats

    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    x = BatchAugmenter(stats=color_stats(images), input_size=32, normalize="cifar10_constants").eval(images)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([(1 - 0.4914) / 0.2023, (1 - 0.4822) / 0.1994,
                                                       (1 - 0.4465) / 0.2010]))
