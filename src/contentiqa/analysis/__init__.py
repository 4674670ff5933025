"""Analyses of IQA data (e.g. how image intelligibility relates to quality, IE-IQA §3.1)."""
from .intelligibility import (
    IntelligibilityAnalysis,
    analyze_intelligibility,
    bin_summary,
    equal_bins,
    plot_intelligibility,
    top1_confidence,
    write_intelligibility_analysis,
)

__all__ = [
    "IntelligibilityAnalysis",
    "analyze_intelligibility",
    "bin_summary",
    "equal_bins",
    "plot_intelligibility",
    "top1_confidence",
    "write_intelligibility_analysis",
]
