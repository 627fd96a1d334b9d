"""Runtime pieces for running specdecode-operator without GPUs: local control plane, vLLM stand-in."""
