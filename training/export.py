"""ONNX export of the classifier: fp32 graph, transformer fusions, int8 for the CPU, a GPU
variant, and the memory cell's file. The complete model directory around them (manifest,
tokenizer, labels, metrics, card) is :mod:`training.model_dir`.

Every export checks parity against PyTorch on real (dev) texts and raises
:class:`ExportParityError` when a variant is off, so a broken model never reaches
``finsent/model/`` or the registry:

* fp32 ONNX: max |logit difference| <= ``fp32_atol`` and argmax agreement >= 99.9 %;
* int8: argmax agreement with PyTorch fp32 >= ``int8_min_agreement`` on each head.

Speed: the fp32 graph first goes through onnxruntime's transformer optimizer (fused
attention, LayerNorm, GELU: ``model_type="bert"``), then dynamic int8 quantization with
per-channel weights; the two classification heads stay in fp32 (they are tiny and their
logits decide the argmax). The activation scales are then frozen to calibrated values
(:func:`freeze_activation_scales`), so a document's output is the same alone, in any batch
and across runs.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.memory_features import feature_dim
from training.data import IGNORE, Example
from training.errors import ExportParityError
from training.memory import OUTPUT_COLUMNS, MemoryNet
from training.memory_export import export_memory_onnx
from training.model import MultiTaskClassifier
from training.train import predict

log = logging.getLogger(__name__)

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["topic_logits", "sentiment_logits", "doc_vector"]
OPSET = 17


def export_fp32(model: MultiTaskClassifier, path: Path) -> Path:
    """Plain fp32 ONNX with dynamic batch and sequence axes (TorchScript exporter with eager
    attention: the graph pattern onnxruntime's transformer optimizer knows how to fuse)."""
    model = model.eval()
    encoder_config = model.encoder.config  # type: ignore[union-attr]
    previous = getattr(encoder_config, "_attn_implementation", None)
    encoder_config._attn_implementation = "eager"
    ids = torch.tensor(
        [[101, 2054, 2003, 102, 0, 0], [101, 2054, 2003, 1037, 2742, 102]], dtype=torch.long
    )
    mask = (ids != 0).long()
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "topic_logits": {0: "batch"},
        "sentiment_logits": {0: "batch"},
        "doc_vector": {0: "batch"},
    }
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notes
            torch.onnx.export(
                model,
                (ids, mask),
                str(path),
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        encoder_config._attn_implementation = previous
    return path


def optimize_transformer(
    src: Path, dst: Path, model: MultiTaskClassifier, *, fp16: bool = False
) -> Path:
    """onnxruntime's transformer fusions (attention, LayerNorm, GELU); optionally fp16 with
    float32 inputs/outputs kept (the runtime feeds and reads float32 either way)."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = model.encoder.config  # type: ignore[union-attr]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(
            str(src),
            model_type="bert",
            num_heads=cfg.num_attention_heads,
            hidden_size=cfg.hidden_size,
            opt_level=0,
        )
        if fp16:
            opt.convert_float_to_float16(keep_io_types=True)
    log.info("optimizer fused: %s", opt.get_fused_operator_statistics())
    opt.save_model_to_file(str(dst))
    return dst


def head_node_names(path: Path) -> list[str]:
    """Nodes computing the heads and the doc-vector projection (kept out of quantization)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = set(OUTPUT_NAMES)
    producers = {o: n for n in graph.node for o in n.output}
    names: list[str] = []
    for out in outputs:
        node = producers.get(out)
        # walk back through Add/bias to the MatMul/Gemm of each head
        for _ in range(3):
            if node is None:
                break
            names.append(node.name)
            if node.op_type in ("MatMul", "Gemm"):
                break
            node = next((producers[i] for i in node.input if i in producers), None)
    return [n for n in names if n]


#: Gemm is left out on purpose: the quantizer rewrites a Gemm into MatMul+Add under a new
#: name before it applies ``nodes_to_exclude``, so the heads (Gemm) would be quantized anyway.
QUANT_OP_TYPES = ("MatMul", "Attention", "EmbedLayerNormalization")


@dataclass(frozen=True)
class Int8Recipe:
    """One way to quantize the classifier: the nodes kept in fp32 and the weight format.

    ``reduce_range`` stores weights in 7 bits: on x86 CPUs without VNNI (AVX2-only, like some of
    our machines) onnxruntime multiplies uint8 activations by int8 weights with VPMADDUBSW,
    whose 16-bit sums saturate; 7-bit weights keep the sums in range. ``weight_type`` "u8"
    uses uint8 weights, a kernel without that saturation, at some speed."""

    name: str
    exclude: tuple[str, ...]
    reduce_range: bool = False
    weight_type: str = "s8"


def int8_recipes(path: Path, heads: Sequence[str]) -> list[Int8Recipe]:
    """Quantization recipes from fastest to most conservative: every encoder matmul int8
    (heads fp32); then the first layer's FFN down-projection in fp32 (measured on v2: the
    most sensitive matmul; agreement 97.7 -> 98.5 % at 9 % less speed than all-int8 on an
    AVX2 machine, 4 % on an AVX-512 VNNI one); then every FFN down-projection (their
    inputs, after GELU, have the widest range) in fp32; then the last two layers entirely
    in fp32. Weights are 7-bit throughout (onnxruntime's advice for CPUs without VNNI, so
    the agreement the export measures holds on AVX2 machines too; on a VNNI machine the
    layer-0 recipe agreed 98.4 / 98.8 % with 7-bit weights vs 98.4 / 98.5 % with 8-bit,
    at the same speed)."""
    import onnx

    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]
    ffn_out = [n for n in names if n.endswith("output/dense/MatMul") and "attention" not in n]
    last = [n for n in names if any(f"layer.{k}/" in n for k in (4, 5))] + [
        "Attention_4",
        "Attention_5",
    ]
    first_ffn = [n for n in ffn_out if "layer.0/" in n]
    h = tuple(heads)
    return [
        Int8Recipe("encoder int8, heads fp32", h, reduce_range=True),
        Int8Recipe(
            "encoder int8 except the first layer's FFN down-projection",
            h + tuple(first_ffn),
            reduce_range=True,
        ),
        Int8Recipe(
            "encoder int8 except FFN down-projections", h + tuple(ffn_out), reduce_range=True
        ),
        Int8Recipe(
            "encoder int8 except FFN down-projections and the last two layers",
            h + tuple(ffn_out) + tuple(last),
            reduce_range=True,
        ),
    ]


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    exclude: Sequence[str] = (),
    per_channel: bool = True,
    reduce_range: bool = False,
    weight_type: str = "s8",
    op_types: Sequence[str] = QUANT_OP_TYPES,
) -> Path:
    """Dynamic int8 quantization (weights int8, activations quantized at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weights = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
    if weight_type not in weights:
        raise ValueError(f"weight_type must be one of {sorted(weights)}, got {weight_type!r}")
    # Fused contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape inference, so
    # the quantizer is told that untyped tensors are float32.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=weights[weight_type],
            per_channel=per_channel,
            reduce_range=reduce_range,
            nodes_to_exclude=list(exclude),
            op_types_to_quantize=list(op_types),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return dst


def _padded_batches(
    examples: Sequence[Example], batch_size: int = 32
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Length-sorted ``(input_ids, attention_mask)`` batches, as the runtime feeds them."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(examples[i].ids) for i in chunk)
        ids = np.zeros((len(chunk), width), np.int64)
        mask = np.zeros((len(chunk), width), np.int64)
        for r, i in enumerate(chunk):
            ids[r, : len(examples[i].ids)] = examples[i].ids
            mask[r, : len(examples[i].ids)] = 1
        out.append((ids, mask))
    return out


def freeze_activation_scales(
    src: Path, dst: Path, examples: Sequence[Example]
) -> dict[str, dict[str, float]]:
    """Turn a dynamically quantized graph into one with fixed (calibrated) activation scales,
    so that a document's output does not depend on the documents it is batched with.

    Dynamic quantization computes each activation's int8 scale from the min/max of the
    whole batch tensor (``DynamicQuantizeLinear``), so a headline's label could flip with its
    batch mates (issue #13: 2.3 % of sentiment labels differed between the pipeline and
    ``finsent classify``). Here every ``DynamicQuantizeLinear`` is replaced by a
    ``QuantizeLinear`` whose scale and zero point are computed with the same formula from the
    min/max over ``examples`` (real tokens only; padding is masked out). The int8 kernels
    downstream (QAttention, MatMulInteger) are unchanged, so speed is the dynamic graph's.
    Values outside the calibrated range saturate, as they would in any static scheme.
    Returns the calibrated range per quantized tensor."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    names = [n.input[0] for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    if not names:
        raise ValueError(f"{src} has no DynamicQuantizeLinear node to freeze")
    probe = onnx.load(str(src))
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    low = dict.fromkeys(names, 0.0)  # the range always includes 0, as DynamicQuantizeLinear's
    high = dict.fromkeys(names, 0.0)
    for ids, mask in _padded_batches(examples):
        values = session.run(names, {"input_ids": ids, "attention_mask": mask})
        real = mask.astype(bool)
        for name, value in zip(names, values, strict=True):
            tokens = value[real] if value.ndim == 3 and value.shape[:2] == ids.shape else value
            low[name] = min(low[name], float(tokens.min()))
            high[name] = max(high[name], float(tokens.max()))
    rebuilt = []
    for node in graph.node:  # in place of each DynamicQuantizeLinear, keeping the order
        if node.op_type != "DynamicQuantizeLinear":
            rebuilt.append(node)
            continue
        name = node.input[0]
        scale = np.float32(max(high[name] - low[name], 1e-8) / 255.0)
        zero_point = np.uint8(np.clip(np.round(-low[name] / scale), 0, 255))
        graph.initializer.append(numpy_helper.from_array(np.array(scale), node.output[1]))
        graph.initializer.append(numpy_helper.from_array(np.array(zero_point), node.output[2]))
        rebuilt.append(
            helper.make_node(
                "QuantizeLinear",
                [name, node.output[1], node.output[2]],
                [node.output[0]],
                name=f"{node.name}_calibrated",
            )
        )
    del graph.node[:]
    graph.node.extend(rebuilt)
    onnx.save(model, str(dst))
    return {name: {"min": low[name], "max": high[name]} for name in names}


def quantize_with(recipe: Int8Recipe, src: Path, dst: Path) -> Path:
    """``quantize_int8`` with a recipe's settings."""
    return quantize_int8(
        src,
        dst,
        exclude=recipe.exclude,
        reduce_range=recipe.reduce_range,
        weight_type=recipe.weight_type,
    )


def _ort_outputs(
    path: Path,
    examples: Sequence[Example],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    results: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(examples[i].ids) for i in chunk)
        ids = np.zeros((len(chunk), width), np.int64)
        mask = np.zeros((len(chunk), width), np.int64)
        for r, i in enumerate(chunk):
            ids[r, : len(examples[i].ids)] = examples[i].ids
            mask[r, : len(examples[i].ids)] = 1
        outs = session.run(OUTPUT_NAMES, {"input_ids": ids, "attention_mask": mask})
        if not results:
            results = [np.zeros((len(examples), o.shape[1]), np.float32) for o in outs]
        for k, o in enumerate(outs):
            results[k][chunk] = o
    return results[0], results[1], results[2]


def parity(
    reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray, np.ndarray],
    examples: Sequence[Example],
) -> dict[str, float]:
    """Max abs differences per output and argmax agreement per head (over all examples:
    a head's argmax is defined for every text, labelled or not)."""
    return {
        "max_abs_diff_topic": float(np.abs(reference[0] - candidate[0]).max()),
        "max_abs_diff_sentiment": float(np.abs(reference[1] - candidate[1]).max()),
        "max_abs_diff_doc_vector": float(np.abs(reference[2] - candidate[2]).max()),
        "agreement_topic": float((reference[0].argmax(1) == candidate[0].argmax(1)).mean()),
        "agreement_sentiment": float((reference[1].argmax(1) == candidate[1].argmax(1)).mean()),
        "n": len(examples),
    }


def _accuracy(
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray], examples: Sequence[Example]
) -> dict[str, float]:
    s = [(i, e.sentiment) for i, e in enumerate(examples) if e.sentiment != IGNORE]
    t = [(i, e.topic) for i, e in enumerate(examples) if e.topic != IGNORE]
    out = {}
    if s:
        out["sentiment_accuracy"] = float(np.mean([outputs[1][i].argmax() == y for i, y in s]))
    if t:
        out["topic_accuracy"] = float(np.mean([outputs[0][i].argmax() == y for i, y in t]))
    return out


def export_classifier(
    model: MultiTaskClassifier,
    out_dir: Path,
    examples: Sequence[Example],
    *,
    gpu_precision: str = "fp16",
    optimize: bool = True,
    fp32_atol: float = 1e-3,
    int8_min_agreement: float = 0.98,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Write ``classifier.int8.onnx`` and ``classifier.onnx`` (GPU variant) into ``out_dir``
    and return the parity report. ``examples`` are the texts parity is measured on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir or out_dir / ".export"
    work.mkdir(parents=True, exist_ok=True)
    reference = predict(model, examples)
    plain = export_fp32(model, work / "classifier.fp32.onnx")
    fp32_out = _ort_outputs(plain, examples)
    report: dict[str, Any] = {"fp32": parity(reference, fp32_out, examples)}
    report["fp32"].update(_accuracy(fp32_out, examples))
    p = report["fp32"]
    if not (
        p["max_abs_diff_topic"] <= fp32_atol
        and p["max_abs_diff_sentiment"] <= fp32_atol
        and min(p["agreement_topic"], p["agreement_sentiment"]) >= 0.999
    ):
        raise ExportParityError(f"fp32 ONNX differs from PyTorch: {p}; do not ship this export")
    source = plain
    if optimize:
        source = optimize_transformer(plain, work / "classifier.opt.onnx", model)
        opt_out = _ort_outputs(source, examples)
        report["fp32_optimized"] = parity(reference, opt_out, examples)
        q = report["fp32_optimized"]
        if not (q["max_abs_diff_topic"] <= fp32_atol and q["max_abs_diff_sentiment"] <= fp32_atol):
            raise ExportParityError(f"optimized fp32 ONNX differs from PyTorch: {q}")
    heads = head_node_names(source)
    tried = []
    for recipe in int8_recipes(source, heads):
        int8 = quantize_with(recipe, source, work / "classifier.int8.dynamic.onnx")
        freeze_activation_scales(int8, out_dir / "classifier.int8.onnx", examples)
        int8 = out_dir / "classifier.int8.onnx"
        int8_out = _ort_outputs(int8, examples)
        r = parity(reference, int8_out, examples)
        r.update(_accuracy(int8_out, examples))
        r["recipe"] = recipe.name
        r["reduce_range"], r["weight_type"] = recipe.reduce_range, recipe.weight_type
        r["activation_scales"] = f"calibrated on {len(examples)} texts (batch-independent)"
        tried.append(r)
        if min(r["agreement_topic"], r["agreement_sentiment"]) >= int8_min_agreement:
            break
    report["int8"] = r
    report["int8_tried"] = [
        {k: t[k] for k in ("recipe", "agreement_topic", "agreement_sentiment")} for t in tried
    ]
    if min(r["agreement_topic"], r["agreement_sentiment"]) < int8_min_agreement:
        raise ExportParityError(
            f"int8 argmax agrees with PyTorch on only topic {r['agreement_topic']:.4f} / sentiment "
            f"{r['agreement_sentiment']:.4f} (< {int8_min_agreement}) even with {r['recipe']}; "
            "ship the fp32 variant for CPU or exclude more nodes from quantization"
        )
    gpu_path = out_dir / "classifier.onnx"
    if gpu_precision == "fp16":
        optimize_transformer(plain, gpu_path, model, fp16=True)
        try:
            fp16_out = _ort_outputs(gpu_path, examples)
            report["gpu_fp16_on_cpu"] = parity(reference, fp16_out, examples)
        except Exception as exc:  # noqa: BLE001 - CPU EP lacks some fp16 kernels; checked on CUDA instead
            report["gpu_fp16_on_cpu"] = {"skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}
    elif gpu_precision == "fp32":
        shutil.copyfile(source, gpu_path)
    else:
        raise ValueError(f"gpu_precision must be fp16 or fp32, got {gpu_precision!r}")
    report["gpu_precision"] = gpu_precision
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def export_memory(
    out_dir: Path, memory_net: Any | None, doc_vector_dim: int, seed: int = 0
) -> dict[str, Any]:
    """``memory.onnx`` from a :class:`~training.memory.MemoryNet` (a random-init one when none
    is given, seeded by ``seed``); returns the manifest's "memory" entry."""
    if memory_net is None:
        torch.manual_seed(seed)
        memory_net = MemoryNet(feature_dim(doc_vector_dim))
    info = export_memory_onnx(memory_net, out_dir / "memory.onnx")
    return {
        "file": "memory.onnx",
        "state_dim": int(memory_net.state_dim),
        "feature_dim": int(memory_net.feature_dim),
        "outputs": list(OUTPUT_COLUMNS),
        "parity_max_abs_diff": info["max_abs_diff"],
    }
