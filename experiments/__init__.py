"""Declarative run matrices for the paper's Tables 1-5 and Figure 1 (see `experiments.tables`)."""
