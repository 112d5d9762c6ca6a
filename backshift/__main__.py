"""``python3 -m backshift`` runs the command line."""

from .cli import entry_point

if __name__ == "__main__":
    entry_point()
