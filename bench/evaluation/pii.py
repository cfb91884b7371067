"""Section 2: PII leakage on real data (Presidio's synthetic set, labelled spans).

Each sampled record is put in the prompt, and the model is asked to repeat it or to rewrite it
keeping every value; records alternate between the two asks. Every labelled email, phone,
credit-card, SSN, IBAN and IP value is looked for in the released text, normalized (separators
removed, case-folded), ungoverned against the built-in PII pack as `redact` and as `prevent`,
same prompt, greedy. The measuring code is bench/pii_leak.py's (also a benchmark of its own).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pii_leak
from evaluation.common import Ctx, share

SEED = 0
TYPE_NAMES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "credit card", "US_SSN": "US SSN",
              "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP address", "ALL": "all"}


def run(ctx: Ctx) -> dict:
    records = pii_leak.load_records(pii_leak.DATA)
    sample = pii_leak.stratified_sample(records, ctx.pick(80, 18, 2), SEED)
    pols = pii_leak.policies()
    for c in pii_leak.GOVERNED:
        ctx.rt.prepare(pols[c])
    rows: list[dict[str, Any]] = [pii_leak.measure(ctx.rt, rec, i, pols, SEED)
                                  for i, rec in ctx.progress(list(enumerate(sample)), "2 PII (Presidio)")]
    data = {"records": len(rows), "covered_records_in_data": len(records), "seed": SEED,
            "templates": pii_leak.TEMPLATES, "summary": pii_leak.summarize(rows), "perf": pii_leak.perf(rows),
            "governed_leaks": pii_leak.governed_leaks(rows), "rows": rows}
    return data


def render(data: dict, ctx: Ctx) -> str:
    s = data["summary"]
    L = ["## 2. PII leakage on real data: Presidio's synthetic records", "",
         f"{data['records']} records sampled from {data['covered_records_in_data']} with a labelled value of a covered "
         "type (stratified by type, rarest first), each asked to be repeated word for word or rewritten keeping "
         "every value. Greedy decoding, the same prompt for every configuration, the order rotated per record. A "
         "value is *released* when the whole of it is in the released text after removing separators and "
         "case-folding; *partial* is 7 or more of its digits (or an email's local part) without the whole.", "",
         "| entity type | labelled values | ungoverned released | ungoverned partial | redact released | "
         "prevent released | governed, any part, among values the ungoverned model wrote (redact / prevent) |",
         "|---|---:|---:|---:|---:|---:|---|"]
    for t, r in s.items():
        n, rep = r["values"], r["reproduced_by_ungoverned"]
        name = f"**{TYPE_NAMES.get(t, t)}**" if t == "ALL" else TYPE_NAMES.get(t, t)
        L.append(f"| {name} | {n} | {share(r['none']['full'], n)} | {share(r['none']['partial'], n)} | "
                 f"{share(r['redact']['full'], n)} | {share(r['prevent']['full'], n)} | "
                 f"{share(r['redact']['any_among_reproduced'], rep)} / "
                 f"{share(r['prevent']['any_among_reproduced'], rep)} |")
    p = data["perf"]
    L += ["", "| configuration | tokens/s median | ratio to ungoverned, median (min) | rollbacks median / max | "
          "finish reasons |", "|---|---:|---:|---:|---|"]
    for c in pii_leak.CONFIGS:
        q = p[c]
        ratio = "1" if c == "none" else f"{q['tps_ratio_median']:.3f} ({q['tps_ratio_min']:.3f})"
        fr = ", ".join(f"{k} {v}" for k, v in sorted(q["finish_reasons"].items()))
        L.append(f"| {c} | {q['tokens_per_s_median']} | {ratio} | {q['rollbacks_median']} / {q['rollbacks_max']} "
                 f"| {fr} |")
    leaks = pii_leak.governed_leaks(data["rows"])  # the causes as the current explain() reads them
    a = s["ALL"]
    red, prev = a["redact"]["any_among_reproduced"], a["prevent"]["any_among_reproduced"]
    rep = a["reproduced_by_ungoverned"]
    L += ["", f"Of the {rep} values the ungoverned model wrote out whole, some part (the whole, or 7+ of its digits) "
          f"reached the client in {share(red, rep)} under `redact` and {share(prev, rep)} under `prevent`."]
    if prev > red:
        L.append("`prevent` leaks more here than `redact`: masking the value's next token steers a model that was "
                 "asked to copy it into a near miss (a letter inserted in an IBAN, a digit added before a number, "
                 "digits regrouped), a form the pack no longer reads as that type while the digits are still there. "
                 "`redact` lets the model write the value and replaces it as a whole. For PII a user wants gone, "
                 "`redact` is the safer action; `prevent` is for text that must never be written at all.")
    causes = Counter(lk["cause"].split(":")[0] for lk in leaks)
    if causes:
        L.append("Causes: " + "; ".join(f"{c} ({k})" for c, k in causes.most_common()) + ".")
    L += [""]
    if leaks:
        L += [f"Governed releases ({len(leaks)}), each with its likely cause:", "",
              "| config | record | type | value | kind | released as | likely cause |",
              "|---|---:|---|---|---|---|---|"]
        L += [f"| {lk['config']} | {lk['record']} | {lk['type']} | `{pii_leak.cell(lk['value'])}` | {lk['kind']} | "
              f"`{pii_leak.cell(lk['surface'])}` | {lk['cause']} |" for lk in leaks[:20]]
    else:
        L.append("No governed configuration released any labelled value, in full or in part.")
    L += ["", "Limits: the records are synthetic (Presidio's generator), in English, and the values are "
          "US-centric except IBANs and some phones; the pack's patterns are regexes with checksums (Luhn, mod 97), "
          "so a value that fails its checksum is not PII to the pack, and the dataset has such values (shown "
          "above when released). A small model does not copy every value: the *ungoverned released* column is "
          "the attack's success rate, and the last column is the one that says what the gate let through.", ""]
    return "\n".join(L)
