"""Readable summaries of a model: per-layer shapes, parameters, MACs, and the memory plan.

Everything here is computed from what the C engine itself decoded (`Model._layers()`,
`Model._plan()`), so the figures are the engine's, not a re-derivation.
"""


def _in_shape(m, layers, t):
    return tuple(m.input_shape) if t == 0 else tuple(layers[t - 1]["out_shape"])


def layer_rows(m):
    """One dict per layer: index, type, in/out shapes, kernel, stride, params, MACs, in place."""
    layers = m._layers()
    plan = m._plan()
    rows = []
    for i, l in enumerate(layers):
        ih, iw, ic = _in_shape(m, layers, l["in0"])
        oh, ow, oc = l["out_shape"]
        kind = l["type"]
        if kind == "conv":
            params, macs = oc * l["kh"] * l["kw"] * ic, oh * ow * oc * l["kh"] * l["kw"] * ic
        elif kind == "dwconv":
            params, macs = oc * l["kh"] * l["kw"], oh * ow * oc * l["kh"] * l["kw"]
        elif kind == "pwconv":
            params, macs = oc * ic, oh * ow * oc * ic
        elif kind == "fc":
            params, macs = oc * ih * iw * ic, oc * ih * iw * ic
        else:
            params, macs = 0, 0
        if kind in ("conv", "dwconv", "pwconv", "fc"):
            params += oc  # biases
        rows.append({
            "index": i, "type": kind, "in": (ih, iw, ic), "out": (oh, ow, oc),
            "kernel": f"{l['kh']}x{l['kw']}/{l['stride'][0]}" if kind in ("conv", "dwconv") else "",
            "params": params, "macs": macs, "in_place": bool(plan["in_place"][i]),
            "scratch": plan["scratch_bytes"][i],
        })
    return rows


def model_summary(m, file_bytes=None):
    rows = layer_rows(m)
    plan = m._plan()
    return {
        "input_shape": tuple(m.input_shape),
        "num_classes": m.num_classes,
        "layers": len(rows),
        "params": sum(r["params"] for r in rows),
        "macs": sum(r["macs"] for r in rows),
        "file_bytes": file_bytes,
        "arena_bytes": plan["arena_bytes"],
        "lower_bound_bytes": plan["peak_live_bytes"],
        "in_place_layers": sum(r["in_place"] for r in rows),
    }


def format_table(headers, rows, aligns=None):
    """Plain-text table; `aligns` is a string of 'l'/'r' per column."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    aligns = aligns or "l" * len(headers)

    def fmt(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, aligns))

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells]
    return "\n".join(lines)


def kib(n):
    return f"{n / 1024:.1f} KB"


# --- budgets ---------------------------------------------------------------------------------

BUDGET_KB_MAX = 0xFFFFFFFF // 1024
BUDGET_KB_RULE = "a positive number of KB (1 KB = 1024 bytes), at most {:,}".format(BUDGET_KB_MAX)


def budget_bytes(kb):
    """The arena budget in bytes for `kb` KB, as every command takes it (`plan`, `train`, `bench`
    and a session file's `budget_kb`), or None when `kb` is not BUDGET_KB_RULE (the engine's
    budget is a 32-bit byte count)."""
    if isinstance(kb, bool) or not isinstance(kb, (int, float)):
        return None
    if not 0 < kb <= BUDGET_KB_MAX + 1023 / 1024:   # also refuses nan and inf
        return None
    return max(1, int(kb * 1024))
