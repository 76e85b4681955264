"""Reports of runs: Markdown tables and figures (`markdown.py`), rendered to HTML (`html.py`)."""
