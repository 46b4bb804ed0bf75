"""The device side: one host-to-device copy per batch, every backbone on it, one read-back;
batches pipelined one deep."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("bfloat16", "float16"):
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


class _Outputs:
    """The embeddings of one batch, possibly still being computed/copied on the GPU.

    All backbones' outputs are concatenated on the device and copied back in one asynchronous
    transfer into pinned memory; :meth:`result` waits for that one copy (the only synchronisation
    of the batch), so the next batch's forward passes are queued before this one is read back.
    """

    def __init__(self, host: torch.Tensor | None, event, dims: dict[str, int]):
        self.host, self.event, self.dims = host, event, dims

    def result(self) -> dict[str, np.ndarray]:
        if self.host is None:
            return {}
        if self.event is not None:
            self.event.synchronize()
        out, a = {}, 0
        flat = self.host.numpy()
        for name, d in self.dims.items():
            out[name] = flat[:, a : a + d]
            a += d
        return out


def _forward_all(models: Mapping, names: Sequence[str], batch, dev, precision) -> _Outputs:
    """Run every backbone of ``names`` on ``batch`` after ONE host-to-device copy."""
    if batch is None or not names:
        return _Outputs(None, None, {})
    # one copy per batch, shared by every backbone (non-blocking from pinned memory on CUDA)
    x = batch.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
    outs, dims = [], {}
    with torch.inference_mode(), _autocast(dev, precision):
        for name in names:
            y = models[name](x)
            y = y.reshape(y.shape[0], -1).float()
            outs.append(y)
            dims[name] = int(y.shape[1])
    with torch.inference_mode():
        flat = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if dev.type != "cuda":
            return _Outputs(flat, None, dims)
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
    return _Outputs(host, event, dims)


def _pipelined(batches: Iterator, launch: Callable) -> Iterator:
    """Yield ``(batch, outputs)`` one batch late: batch k+1 is launched on the device before the
    outputs of batch k are read back, so on a GPU the host never waits on an idle device."""
    pending = None
    for b in batches:
        launched = (b, launch(b))
        if pending is not None:
            yield pending
        pending = launched
    if pending is not None:
        yield pending
