"""specdecode-operator: serve LLMs on Kubernetes with vLLM speculative decoding, tune K."""
