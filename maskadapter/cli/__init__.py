"""The commands, on top of the engine: ``label`` (single images), ``batch`` (collections,
local or Ray Data), ``evaluate`` (the paper's benchmarks) and ``benchmark`` (speed);
``common`` holds what they share. ``maskadapter.__main__`` dispatches to them."""
