"""Input, DummyData and Python layers."""
