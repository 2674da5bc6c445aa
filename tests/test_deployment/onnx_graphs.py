"""Walking an exported ONNX model, shared by the deployment tests."""


def all_graphs(graph):
    """``graph`` (an ONNX GraphProto) and every graph nested in it (If branches, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField('g') else []) + list(attr.graphs):
                yield from all_graphs(sub)
