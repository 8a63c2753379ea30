"""planflow: plan, run, watch and heal AI pipelines on Prefect 3.

This package holds the command line and the embedded stack; the framework's
core lives in `flows/`, the planner in `planner/`, configuration blocks in
`blocks/` and monitoring in `monitoring/`.
"""

__version__ = "0.1.0"
