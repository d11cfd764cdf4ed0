"""Hugging Face export: the exporter (export.py, tokenizer_files.py; no torch) and the two template modules it
copies beside the weights, configuration_nanoloop.py and modeling_nanoloop.py (PyTorch, loaded by transformers
with trust_remote_code=True). Nothing in the package imports the templates: they need torch and transformers.
"""
