"""`mmw2s browse`: look at a bootstrap run's decisions in a static HTML site (see `site.py`)."""
