"""The chaos run (`make chaos`, `python -m tests.chaos`): tests/chaos/runner.py."""
