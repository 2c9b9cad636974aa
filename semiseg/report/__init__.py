"""Reports people can look at: metric tables (tables.py), overlay thumbnails (overlay.py) and the HTML report
of benchmark results files (html.py: ``semiseg report``; imported on its own, it needs the benchmark)."""
from semiseg.report.overlay import overlay_png
from semiseg.report.tables import metrics_markdown

__all__ = ["overlay_png", "metrics_markdown"]
