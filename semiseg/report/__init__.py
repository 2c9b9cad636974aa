"""Reports people can look at: metric tables, overlay thumbnails, plots."""
from semiseg.report.overlay import overlay_png
from semiseg.report.tables import metrics_markdown

__all__ = ["overlay_png", "metrics_markdown"]
