"""Writes small datasets in the official CIFAR python layout (the real files cannot be downloaded here)."""
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
                    label_key=b"labels", names_key=b"label_names", classes=10),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", train=["train"],
                     test=["test"], meta="meta", label_key=b"fine_labels", names_key=b"fine_label_names",
                     classes=100),
}


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar(root, variant, train_per_file, test_size, seed=0):
    """Write the folder layout; return {file name: md5} for every file written."""
    spec = LAYOUT[variant]
    folder = Path(root) / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(name, n):
        # Balanced labels so stratified splits have every class.
        labels = (np.arange(n) % spec["classes"]).tolist()
        record = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                  spec["label_key"]: labels, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))

    for name in spec["train"]:
        dump(name, train_per_file)
    for name in spec["test"]:
        dump(name, test_size)
    names = [f"label_{i}".encode() for i in range(spec["classes"])]
    (folder / spec["meta"]).write_bytes(pickle.dumps({spec["names_key"]: names}, protocol=2))
    return {p.name: md5(p) for p in folder.iterdir()}


def pack(root, variant):
    """Pack the written folder into the official archive name; return the archive's path."""
    spec = LAYOUT[variant]
    archive = Path(root) / spec["archive"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(Path(root) / spec["folder"], arcname=spec["folder"])
    archive.write_bytes(buf.getvalue())
    return archive
