"""Images too large for the device's memory, streamed from a memory map on the host.

ImageNet at 256 px is about 250 GB of uint8: it cannot sit on a GPU (or in RAM) as CIFAR does. A
`StreamedImages` keeps the rows of a memory-mapped cache and hands out batches on the training device: for an
epoch's order (drawn on the device by the same generator as a resident dataset's, so the same seed gives the
same batches) a background thread gathers the next batches from the map into pinned host memory, and each is
copied to the device asynchronously while the previous one trains. At most `PREFETCH` batches wait in host
memory, so the host's share is bounded whatever the dataset's size.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, Optional

import numpy as np
import torch

PREFETCH = 4  # batches gathered ahead: enough to hide a gather behind a step, a bounded share of host memory


def resident_budget(device: torch.device, resident_gb: Optional[float]) -> int:
    """Bytes of images that may be held in `device`'s memory; larger datasets are streamed. `resident_gb`
    (data.resident_gb) when set, else half the GPU's memory, or half the host's available memory for the CPU
    (the other half is the model's, the activations' and the rest of the system's)."""
    if resident_gb is not None:
        return int(resident_gb * 1e9)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    import psutil

    return psutil.virtual_memory().available // 2


class StreamedImages:
    """uint8 images (N, 3, S, S): rows `rows` of the memory map `source`, handed out on `device`."""

    def __init__(self, source: np.ndarray, rows: np.ndarray, device: torch.device = torch.device("cpu")):
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.device = torch.device(device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.source.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def nbytes(self) -> int:
        return len(self.rows) * int(np.prod(self.source.shape[1:]))

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device) -> "StreamedImages":
        return StreamedImages(self.source, self.rows, device)

    def _gather(self, index) -> torch.Tensor:
        """Rows `index` (a slice, or positions) of these images, as a host tensor (pinned for a GPU)."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        batch = torch.from_numpy(np.ascontiguousarray(self.source[self.rows[index]]))
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def __getitem__(self, index) -> torch.Tensor:
        return self._gather(index).to(self.device, non_blocking=True)

    def batches(self, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[torch.Tensor]:
        """The batches of one epoch in `order` (positions), gathered ahead by a background thread."""
        order = order.cpu().numpy()  # the one synchronisation of the epoch
        ahead: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def gather() -> None:
            try:
                for step in range(steps):
                    if not put(self._gather(order[step * batch_size:(step + 1) * batch_size])):
                        return
            except BaseException as exc:  # a read error reaches the training loop, not a dead thread
                put(exc)

        thread = threading.Thread(target=gather, name="batch-gather", daemon=True)
        thread.start()
        try:
            for _ in range(steps):
                item = ahead.get()
                if isinstance(item, BaseException):
                    raise item
                yield item.to(self.device, non_blocking=True)
        finally:
            stop.set()  # an epoch left early (pruned, interrupted): the thread ends instead of blocking
            thread.join()


def epoch_batches(images, order: torch.Tensor, batch_size: int, steps: int) -> Iterator[torch.Tensor]:
    """One epoch's training batches, resident (indexing on the device) or streamed alike."""
    if isinstance(images, StreamedImages):
        yield from images.batches(order, batch_size, steps)
    else:
        for step in range(steps):
            yield images[order[step * batch_size:(step + 1) * batch_size]]
