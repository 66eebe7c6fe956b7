"""Governance in the core: classifications (which columns hold which class of data) and what reads them."""
