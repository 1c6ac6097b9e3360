"""From stored rows to conclusions: grouping into tables of poolable results (``results``),
statistics and significance tests (``stats``), DD-Ranking's scores (``scores``), report
rendering (``report``), figures (``plots``), the cost table (``cost_table``), whether results
are a paper's protocol at its published values (``protocols``), and checks against published
or own baselines (``check``, ``baselines``).

Imports: ``storage`` (it reads the store), ``evaluation.protocol`` (label modes and recipe
parameters), ``registry`` (the registered protocols' published values), ``data.conditions``
(labels), ``plan.score_cells``; never the runner or the CLI.
"""
