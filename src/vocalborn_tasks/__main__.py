"""``python -m vocalborn_tasks``: the management CLI."""

from .cli import main

if __name__ == "__main__":
    main()
