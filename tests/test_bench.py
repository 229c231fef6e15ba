import pytest

from alexnet_exp.bench import train_macs
from alexnet_exp.model import build_model


def test_mac_count_matches_the_paper_network():
    # The paper's two-GPU network: about 0.72 GMAC per 227x227 image (~4.3 GFLOP per trained image).
    grouped = train_macs(build_model("alexnet", 1000, groups=2), 227)
    assert grouped == pytest.approx(0.72e9, rel=0.03)
    # One GPU, no grouping: conv2/4/5 see all channels, about 1.13 GMAC.
    assert train_macs(build_model("alexnet", 1000, groups=1), 227) == pytest.approx(1.13e9, rel=0.03)


def test_processes_sharing_a_device_report_their_rates():
    # The plumbing of the --trials-per-gpu measurement (worker processes, their output), on the CPU and tiny.
    from alexnet_exp.bench import shared_device

    result = shared_device([2], images_per_worker=64, device="cpu", batch=32)
    rates = result["K=2"]["per_worker_img_s"]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)


def test_a_failing_benchmark_worker_is_an_error_not_a_figure():
    from alexnet_exp.bench import shared_device

    with pytest.raises(RuntimeError, match="a benchmark worker failed"):
        shared_device([1], images_per_worker=64, device="no-such-device", batch=32)
