"""specdecode-sim: a vLLM stand-in that serves the OpenAI API and vLLM's real /metrics,
with speculative decoding simulated (acceptance profiles, continuous batching, step costs).

Functional core: acceptance, step_cost, spec_config, engine, metrics, openai_api (pure).
Thin shell: server (aiohttp), cli. See docs/vllm-sim.md.
"""
