"""matplotlib for the command-line tools' PNGs (an optional extra: `uv sync --extra plot`)."""


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or an ImportError that says how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: uv sync --extra plot (the CSV was written)") from None
    return plt
