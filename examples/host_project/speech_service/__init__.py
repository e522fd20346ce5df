"""speech_service: a host application of vocalborn-tasks (the example of docs/testing.md)."""
