"""ABN: a layer-wise arbitrary bit-width supernet with a per-image width policy.

The model library: quantizers, switchable layers, supernets, BitOps, data, the policy, training,
evaluation and the model directory. It knows nothing of HTTP (see ``service``).
"""

__version__ = "0.1.0"
