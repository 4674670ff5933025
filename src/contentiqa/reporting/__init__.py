"""Result files (CSV / JSON / JSON Lines) and the self-contained HTML report."""
from .html import make_thumbnail, model_info, read_html_rows, render_html_report, write_html_report
from .results import FIELDS, format_table, output_format, read_results, row_from_prediction, sort_rows, write_results

__all__ = [
    "FIELDS",
    "format_table",
    "make_thumbnail",
    "model_info",
    "output_format",
    "read_html_rows",
    "read_results",
    "render_html_report",
    "row_from_prediction",
    "sort_rows",
    "write_html_report",
    "write_results",
]
