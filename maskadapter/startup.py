"""Imported first by the programs (``app.py``, ``python -m maskadapter``, the
``maskadapter`` command): tunes the allocator for model work (``maskadapter.memory``)
before torch is loaded. Importing ``maskadapter`` itself changes nothing."""

from maskadapter.memory import tune_allocator

tune_allocator()
