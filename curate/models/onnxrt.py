"""``onnx:FILE``: an ONNX model run by onnxruntime (the ``[onnx]`` extra).

The model must take one float input ``(batch, C, H, W)`` whose first axis is dynamic (a fixed batch size would
have to be worked around one image at a time, and hides exports made without a batch axis). Preprocessing comes
from the ``curate.json`` metadata prop (``curate export-model`` writes it); a foreign file without it takes
``C, H, W`` from the input's static shape and plain ``pixel / 255`` scaling (mean 0, std 1, source ``default``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.models.base import Backend, Preprocessing, check_preprocessing, first_line, require
from curate.models.torchnets import META_KEY, head_of, named_outputs, parse_meta, preprocessing_from

# Preferred order: CUDA, then Apple's CoreML (the MPS of onnxruntime), then the CPU.
PROVIDERS = ("CUDAExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider")


@dataclass
class OnnxBackend(Backend):
    session: Any = None
    input_name: str = ""
    output_names: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("embedding",)

    def _forward(self, x: np.ndarray, what: str) -> dict[str, np.ndarray]:
        values = self.session.run(list(self.output_names), {self.input_name: x})
        return named_outputs(self.spec, self.outputs, [np.asarray(v, np.float32) for v in values])


def input_shape(spec: str, inputs: list[Any]) -> tuple[Any, Any, Any, Any]:
    """The one input's ``(batch, C, H, W)`` shape, checked: four axes, float, a dynamic batch axis.

    Raises:
        CurateError: several inputs, another rank or type, or a fixed first axis (names the input and its shape).
    """
    if len(inputs) != 1:
        raise CurateError(
            f"{spec}: the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); one image input is supported"
        )
    inp = inputs[0]
    shape = list(inp.shape)
    if len(shape) != 4:
        raise CurateError(f"{spec}: input {inp.name!r} has shape {shape}; an image model takes (batch, C, H, W)")
    if inp.type != "tensor(float)":
        raise CurateError(f"{spec}: input {inp.name!r} is {inp.type}; float32 pixels are expected")
    if isinstance(shape[0], int):
        raise CurateError(
            f"{spec}: input {inp.name!r} has shape {shape}: no batch axis (its first axis is fixed to {shape[0]})",
            hint="export the model with a dynamic first axis (dynamic_axes / dynamic_shapes)",
        )
    return shape[0], shape[1], shape[2], shape[3]


def fit_shape(spec: str, pre: Preprocessing, shape: tuple[Any, Any, Any, Any]) -> None:
    """Raise when the graph's static ``C, H, W`` contradict the metadata (the model would reject every batch)."""
    want = (pre.channels, *pre.size)
    for axis, got, need in zip(("channels", "height", "width"), shape[1:], want, strict=True):
        if isinstance(got, int) and got != need:
            raise CurateError(
                f"{spec}: its metadata says {'x'.join(map(str, want))} input but the graph takes {'x'.join(map(str, shape[1:]))} "
                f"({axis} {got}, not {need})"
            )


def load_onnx(path: Path, batch_size: int) -> OnnxBackend:
    spec = f"onnx:{path}"
    ort = require("onnxruntime", "onnx", spec)
    if not path.is_file():
        raise CurateError(f"{spec}: no such file")
    providers = [p for p in PROVIDERS if p in ort.get_available_providers()]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - a file that is not an ONNX model
        raise CurateError(f"{spec}: not an ONNX model onnxruntime can load ({first_line(exc)})") from None
    shape = input_shape(spec, session.get_inputs())
    meta = parse_meta(session.get_modelmeta().custom_metadata_map.get(META_KEY), spec)
    if meta is not None:
        classes, outputs = head_of(meta, spec)
        pre = preprocessing_from(meta, spec, "metadata")
        fit_shape(spec, pre, shape)
    else:
        if not all(isinstance(v, int) for v in shape[1:]):
            raise CurateError(f"{spec}: input shape {list(shape)} has no fixed C, H, W and the file has no {META_KEY} metadata")
        c = int(shape[1])
        pre = check_preprocessing(spec, Preprocessing((int(shape[2]), int(shape[3])), c, (0.0,) * c, (1.0,) * c, source="default"))
        classes, outputs = None, ("embedding",)
    names = tuple(o.name for o in session.get_outputs())
    if meta is not None and len(names) < len(outputs):
        raise CurateError(f"{spec}: the graph has {len(names)} outputs, its metadata names {len(outputs)} ({', '.join(outputs)})")
    device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    return OnnxBackend(spec, "onnx", path, pre, classes, device, batch_size, session=session, input_name=session.get_inputs()[0].name,
                       output_names=names[: len(outputs)], outputs=outputs)  # fmt: skip
