"""From stored rows to conclusions: grouping into tables of poolable results (``results``),
statistics and significance tests (``stats``), DD-Ranking's scores (``scores``), report
rendering (``report``), figures (``plots``), the cost table (``cost_table``), and checks
against published or own baselines (``check``, ``baselines``).

Imports: ``storage`` (it reads the store), ``evaluation.protocol`` (label modes and recipe
parameters), ``data.conditions`` (labels), ``plan.score_cells``; never the runner or the CLI.
"""
