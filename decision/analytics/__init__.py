"""Measured ROI: what the decisions earned (issue 16).

The analytical room, above the store and beside the core: it reads decision records and
outcomes exported to Parquet (``export``) with DuckDB, and computes the report
(``report``), attribution (``attribution``), the statistics they share (``stats``), the
off-policy what-if (``whatif``, ``ope``) and the charts (``charts``).
"""
