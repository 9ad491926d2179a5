"""From per-run metrics to the paper: aggregation, statistics, figures, tables."""
