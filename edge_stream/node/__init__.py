"""Transport: the wire protocol, launch-file config, security, the node's socket loop and
workers, per-model policies, proxies and clients.

Stays empty: `import edge_stream.node.client` (a sensor's publisher) must load pyzmq,
msgpack and numpy only, never onnxruntime.
"""
