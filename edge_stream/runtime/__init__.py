"""Model execution and streams: manifests, ONNX Runtime sessions, explicit state, KV caches.

Knows nothing of sockets, voice or applications. Modules are imported by name
(`edge_stream.runtime.model`, ...): this file stays empty so importing one of them
loads only what it needs.
"""
