"""Read a torch.save file (zip format) without PyTorch: tensors and plain values only, never arbitrary objects.

torch.save writes a zip holding <root>/data.pkl (a pickle), <root>/data/<key> (the raw bytes of each storage)
and <root>/byteorder. In a checkpoint of weights the pickle names only three kinds of global:
collections.OrderedDict, torch._utils._rebuild_tensor_v2 and storage types (torch.FloatStorage, ...), the
storages themselves arriving as persistent ids ('storage', type, key, location, numel). This unpickler
resolves exactly those, turning each tensor into a numpy array, and refuses any other global with one line:
the guarantee of torch.load(weights_only=True), so CI and users without the [torch] extra can read ckpt.pt.
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from nanoloop_jax.errors import UserError

# torch's (legacy, still written) typed storage names -> numpy dtype of their elements
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class TorchCheckpointError(UserError, ValueError):
    """A file that is not a zip-format torch.save of tensors and plain values (one-line message)."""


class _StorageType:
    """What the pickle's `torch.FloatStorage` (etc.) global resolves to: just the element dtype."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 for numpy: a strided view of the storage, bounds-checked, then copied."""
    del requires_grad, backward_hooks, metadata  # autograd flags and hooks mean nothing for stored weights
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min(stride, default=0) < 0 or offset < 0:
        raise TorchCheckpointError(f"tensor with size {size}, stride {stride}, offset {offset} is malformed")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:  # as_strided would read past the buffer
        raise TorchCheckpointError(f"tensor of size {size} reaches element {last} of a {storage.size}-element storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False
    )
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    """Resolves only OrderedDict, the tensor rebuild function and storage types; storages come from the zip."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, root: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.root, self.byteorder = zf, root, byteorder
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchCheckpointError(
            f"it pickles {module}.{name}, which is not a tensor or a plain container; refusing to unpickle it "
            "(only weights and plain values are read)"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise TorchCheckpointError(f"unsupported persistent id {str(pid)[:80]!r}; only tensor storages are read")
        _, storage_type, key, _, numel = pid
        if key not in self.storages:
            try:
                raw = self.zf.read(f"{self.root}/data/{key}")
            except KeyError:
                raise TorchCheckpointError(f"storage {key} is missing from the archive") from None
            dtype = storage_type.dtype
            if len(raw) < int(numel) * dtype.itemsize:
                raise TorchCheckpointError(f"storage {key} has {len(raw)} bytes, fewer than {numel} elements need")
            storage = np.frombuffer(raw, dtype, count=int(numel))
            self.storages[key] = storage.byteswap() if self.byteorder != sys.byteorder else storage
        return self.storages[key]


def load(path: str) -> Any:
    """The object a zip-format torch.save wrote, tensors as numpy arrays; TorchCheckpointError for anything else."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise TorchCheckpointError(
            "not a zip-format torch.save file (torch < 1.6 wrote another format: re-save it with a newer torch)"
        ) from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise TorchCheckpointError("not a torch.save archive (no <root>/data.pkl)")
        root = pkl[0].split("/")[0]
        names = set(zf.namelist())
        byteorder = zf.read(f"{root}/byteorder").decode().strip() if f"{root}/byteorder" in names else "little"
        try:
            return _Unpickler(zf.read(pkl[0]), zf, root, byteorder).load()
        except TorchCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise TorchCheckpointError(f"its pickle is damaged ({' '.join(str(err).split())})") from None
