"""Gather run results with pandas, rebuild the paper's tables and Figure 1, compare IoU distributions.

Command lines: `python -m analysis.tables`, `python -m analysis.figure1`, `python -m analysis.compare_iou`.
"""
