"""specdecode-operator: serve LLMs on Kubernetes with vLLM speculative decoding and tune the draft length."""
