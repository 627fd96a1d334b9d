"""A real local Kubernetes control plane (etcd, kube-apiserver, controllers, kwok) for tests
and the demo. See ``LocalPlane``."""

from .binaries import Binaries, locate
from .plane import GPUNodePool, LocalPlane
from .process import PlaneError

__all__ = ["Binaries", "GPUNodePool", "LocalPlane", "PlaneError", "locate"]
