"""Start-up hook of every Python process of a vLLM server that ``vllm_shim`` starts (the shim
puts this directory on ``PYTHONPATH``): vLLM's own AMX kernels off.

vLLM 0.32's CPU attention picks its AMX kernel for bfloat16 whenever
``torch.cpu._is_amx_tile_supported()`` says yes. On some virtual machines that advertise AMX
(seen on a Firecracker guest whose CPU lists ``amx_bf16 amx_tile amx_int8``) the kernel dies
with SIGILL on the first request, while oneDNN's AMX matmuls in the same process run fine.
With the check answering no, vLLM uses its AVX-512 kernels, as on any CPU without AMX; oneDNN
is not affected. ``SPECDECODE_VLLM_AMX=1`` in the pod's env keeps vLLM's AMX kernels.

Not a package module: this directory only ever reaches the vLLM venv's ``sys.path``.
"""

import os

if os.environ.get("SPECDECODE_VLLM_AMX") != "1":
    try:
        import torch.cpu
    except ImportError:   # not the vLLM venv: nothing to turn off
        pass
    else:
        torch.cpu._is_amx_tile_supported = lambda: False
