"""What a picture's reader sees, read from its matplotlib figure rather than from the PNG."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.text import Text

from semseg.reporting.run_pictures import MIN_FONT_PT


def texts(fig: Figure) -> list[Text]:
    """Every visible, non-empty text of the figure, as drawn (tick labels exist once drawn)."""
    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def legend_labels(fig: Figure) -> list[str]:
    """The labels of the figure's legends and of its axes' legends."""
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [text.get_text() for legend in legends for text in legend.get_texts()]


def assert_readable(fig: Figure, title: str, classes: list[str] | None = None) -> None:
    """The title says what the picture shows, the legend names the classes, no text is tiny."""
    assert fig.get_suptitle() == title
    if classes is not None:
        assert set(classes) <= set(legend_labels(fig))
    tiny = [(t.get_text(), t.get_fontsize()) for t in texts(fig) if t.get_fontsize() < MIN_FONT_PT]
    assert not tiny, f"text under {MIN_FONT_PT} pt: {tiny}"
