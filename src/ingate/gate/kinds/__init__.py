"""Rule kinds, each behind one protocol (`base.Check`): forbidden language (`forbid`), semantic
groups (`semantic`) and the entropy budget (`entropy`). A new rule kind is one new module here."""
