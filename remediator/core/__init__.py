"""Pure, synchronous, deterministic core: types and decisions, no I/O."""
