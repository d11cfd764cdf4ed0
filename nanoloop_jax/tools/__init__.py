"""Research tools on top of the core: sweeps, task evaluators, benchmarks, lowering, the converter's CLI.

Each is a thin absl command line over tested functions, `python -m nanoloop_jax.tools.<name>` (big_vision's
`tools/`), run through nanoloop_jax.cli.run_tool. The core never imports them.
"""
