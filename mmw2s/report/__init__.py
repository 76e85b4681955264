"""Reports of runs, by concern: the numbers compared (`stats`: headline, PGR, spread over seeds),
Markdown tables (`tables`), figures (`plots`), pages rendered from Jinja2 templates (`markdown`,
`templates/*.md.j2`), the experiment's and the sweep's report (`experiment`), and `report.html`
(`html`)."""
