"""Run configs for train.py / bench.py / sample.py (`--config=configs/X.py[:variant]`); they import each other."""
