"""The evaluation report (`make eval`, issue 13): one module a section, run by bench/evaluate.py.

Each section module has `run(ctx) -> dict` (JSON, sample sizes included) and
`render(data, ctx) -> str` (its Markdown section, plots written to ctx.img).
"""
