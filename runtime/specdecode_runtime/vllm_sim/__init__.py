"""specdecode-sim: a vLLM stand-in that serves the OpenAI API and vLLM's real /metrics,
with speculative decoding simulated (acceptance profiles, continuous batching, step costs).

Functional core: acceptance, spec_config, serve_args, engine, metrics, openai_api (pure), on a
step-cost world from specdecode_runtime.hardware. Thin shell: server (aiohttp), cli.
See docs/vllm-sim.md.
"""
