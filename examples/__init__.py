"""Runnable examples of vocalborn-tasks (a package only so a worker can import them).

Each script reads ``REDIS_URL`` from the environment and needs a running worker::

    export REDIS_URL=redis://127.0.0.1:6379      # or: vocalborn-tasks server --port 6379
    vocalborn-tasks worker &
    python examples/submit_and_wait.py
"""
