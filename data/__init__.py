"""Corpus reading, splitting, augmentation and the synthetic corpus (data/prepare_data.py is the script)."""
