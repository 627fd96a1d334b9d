"""Running specdecode-operator without GPUs: the local control plane and the vLLM stand-in."""
