"""Hugging Face export: the exporter (export.py, tokenizer_files.py; no torch), the two template modules it copies
beside the weights, configuration_nanoloop.py and modeling_nanoloop.py (PyTorch, loaded by transformers with
trust_remote_code=True), and lm_eval_tasks/ (an offline lm-eval task). Nothing in the package imports the
templates: they need torch and transformers.
"""
