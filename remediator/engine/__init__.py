"""The engine: queueing runs, executing their steps through actions, verifying the result."""
