"""vocalborn-tasks: typed, reliable async task layer for long audio-analysis jobs."""
