"""Make a model directory's int8 classifier give bit-identical outputs in any batch.

Why. The scorer's micro-batches depend on arrival timing, yet a replay must reproduce every
prediction exactly (``tests/consumers/test_replay_determinism.py``), so until now the runtime
ran one onnxruntime call per document. Measured on v3 (int8 with calibrated, fixed
activation scales): the encoder's last hidden state is bit-exact for the real tokens whatever
the batch and its padding, and so are the quantized heads given the same pooled vector; what
moves (by ~1e-7) is the fp32 mean pooling (``ReduceSum`` over the sequence, whose summation
order onnxruntime picks by tensor shape) and the fp32 doc-vector projection (``MatMul``).

What. :func:`make_batch_exact` rewrites the directory so the runtime can take those two
steps out of onnxruntime and compute them per document in numpy, where the summation order
depends only on the document (``pipeline.inference.Classifier``):

* ``classifier.int8.onnx`` gains an output ``last_hidden`` ``[N, W, H]`` (the encoder's
  last layer), the input of the pooling;
* ``classifier.int8.heads.onnx`` is the heads' subgraph: pooled ``[N, H]`` in, topic and
  sentiment logits out (QuantizeLinear with the calibrated scale, MatMulInteger, rescale,
  bias: elementwise or integer, so exact in any batch);
* ``classifier.doc_projection.npy`` is the doc-vector projection ``[H, D]``;
* the manifest's ``classifier.cpu_exact_batching`` names them, with the pooling's count
  floor and the L2 norm's epsilon read from the graph.

It needs the graph's structure (mean pooling feeding the heads' QuantizeLinear and an L2
normalised projection), which :func:`training.export.export_classifier` produces; anything
else raises :class:`~training.errors.ExportParityError` and the directory is left unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import ExportParityError

HIDDEN_OUTPUT = "last_hidden"
HEADS_FILE = "classifier.int8.heads.onnx"
PROJECTION_FILE = "classifier.doc_projection.npy"


def _constant(graph: Any, name: str) -> float:
    """The scalar value of the Constant node or initializer named ``name``."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return float(numpy_helper.to_array(init).reshape(-1)[0])
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            return float(numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0])
    raise ExportParityError(f"no constant {name!r} in the classifier graph")


def _locate(graph: Any) -> dict[str, Any]:
    """The tensors of the pooling: last hidden, pooled, and the projection's pieces."""
    from onnx import numpy_helper

    producer = {out: node for node in graph.node for out in node.output}
    inits = {i.name: i for i in graph.initializer}

    def made_by(name: str, op: str) -> Any:
        node = producer.get(name)
        if node is None or node.op_type != op:
            raise ExportParityError(
                f"the classifier graph is not the exported shape ({name!r} is not made by {op}); "
                "re-export it with training.export"
            )
        return node

    project = made_by("doc_vector", "MatMul")
    weight = project.input[1]
    if weight not in inits:
        raise ExportParityError("the doc-vector projection is not a constant weight")
    normalise = made_by(project.input[0], "Div")
    pooled = normalise.input[0]
    norm_eps = _constant(graph, made_by(normalise.input[1], "Clip").input[1])
    mean = made_by(pooled, "Div")
    total = made_by(mean.input[0], "ReduceSum")
    count_floor = _constant(graph, made_by(mean.input[1], "Clip").input[1])
    masked = made_by(total.input[0], "Mul")
    hidden = next(
        (i for i in masked.input if producer.get(i) and producer[i].op_type != "Cast"), None
    )
    if hidden is None:
        raise ExportParityError(
            "cannot find the encoder's last hidden state in the classifier graph"
        )
    consumers = [n.op_type for n in graph.node if pooled in n.input]
    if "QuantizeLinear" not in consumers:
        raise ExportParityError(
            "the heads do not read a statically quantized pooled vector; the classifier was not "
            "exported with calibrated activation scales (training.export.freeze_activation_scales)"
        )
    return {
        "hidden": hidden,
        "pooled": pooled,
        "projection": numpy_helper.to_array(inits[weight]).astype(np.float32),
        "count_floor": count_floor,
        "norm_eps": norm_eps,
    }


def make_batch_exact(model_dir: Path) -> dict[str, Any]:
    """Rewrite ``model_dir`` as the module docstring says; returns the manifest entry."""
    import onnx
    from onnx import helper
    from onnx.utils import Extractor

    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    cpu_path = model_dir / manifest["classifier"]["cpu"]
    model = onnx.load(str(cpu_path))
    found = _locate(model.graph)
    width = int(found["projection"].shape[0])
    for name in (found["pooled"], "topic_logits", "sentiment_logits"):
        if name not in {v.name for v in model.graph.value_info}:  # the extractor needs types
            dims = ["N", width] if name == found["pooled"] else None
            model.graph.value_info.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)
            )
    heads = Extractor(model).extract_model([found["pooled"]], ["topic_logits", "sentiment_logits"])
    if HIDDEN_OUTPUT not in [o.name for o in model.graph.output]:
        model.graph.node.append(helper.make_node("Identity", [found["hidden"]], [HIDDEN_OUTPUT]))
        model.graph.output.append(
            helper.make_tensor_value_info(HIDDEN_OUTPUT, onnx.TensorProto.FLOAT, None)
        )
    entry = {
        "heads": HEADS_FILE,
        "heads_input": found["pooled"],
        "hidden_output": HIDDEN_OUTPUT,
        "doc_projection": PROJECTION_FILE,
        "pool_count_floor": found["count_floor"],
        "norm_eps": found["norm_eps"],
    }
    tmp = cpu_path.with_name(cpu_path.name + ".tmp")
    onnx.save(model, str(tmp))
    onnx.save(heads, str(model_dir / HEADS_FILE))
    np.save(model_dir / PROJECTION_FILE, found["projection"])
    tmp.replace(cpu_path)
    manifest["classifier"]["cpu_exact_batching"] = entry
    manifest_tmp = manifest_path.with_name("manifest.json.tmp")
    manifest_tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    manifest_tmp.replace(manifest_path)
    return entry
