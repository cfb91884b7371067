"""Rule kinds, one module each: its schema, spec, compiled part and check together (`forbid`,
`semantic`, `entropy`), behind one protocol (`base.Check`) and registered by name in
`ingate.policy.kinds`. A new rule kind is one new module and one `register_kind` call."""
