"""matplotlib for the command-line tools' PNGs (an optional extra: `uv run --extra plot ...`)."""

from nanoloop_jax.errors import UserError


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or a UserError that says how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: run with `uv run --extra plot ...` (the CSV was written)") from None
    return plt


def save_loss_plot(plt, fig, ax, path: str, xlabel: str) -> None:
    """Finish a val-loss line plot (labels, grid, legend) and write it to path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
