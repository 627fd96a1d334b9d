"""``python -m specdecode_runtime.vllm_sim serve MODEL ...``"""

from .cli import main

raise SystemExit(main())
