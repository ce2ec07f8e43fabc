"""The common ending of every pass: remove unused nodes, toposort, infer shapes, check."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from passes._core.errors import PassError


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with dead nodes and unused initializers removed and nodes in topological order."""
    graph = gs.import_onnx(model)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    # graphsurgeon rebuilds the ModelProto: carry over what it does not know about.
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    out.producer_name = model.producer_name
    out.producer_version = model.producer_version
    out.doc_string = model.doc_string
    out.graph.name = model.graph.name
    # graphsurgeon drops node metadata (the dynamo exporter's module paths); restore it by node name.
    meta = {n.name: list(n.metadata_props) for n in model.graph.node if n.name and len(n.metadata_props)}
    if meta:
        for node in out.graph.node:
            if node.name in meta and not len(node.metadata_props):
                node.metadata_props.extend(meta[node.name])
    return out


def finalize(model: onnx.ModelProto, *, strict: bool = True, clean: bool = True) -> onnx.ModelProto:
    """Clean up, toposort, run (strict) shape inference and the full ``onnx.checker``; return the new model.

    Raises :class:`PassError` when the result is not a valid model: that is a bug of the pass, never something to
    write to disk.
    """
    out = cleanup(model) if clean else model
    try:
        del out.graph.value_info[:]
        out = onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=strict, data_prop=True)
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:
        raise PassError(f"the rewritten model does not pass the ONNX checks ({exc}); nothing was written.") from exc
    return out
