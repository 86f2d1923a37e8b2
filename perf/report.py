#!/usr/bin/env python3
"""Turns perf/run's measurements into a report (no dependencies).

  report.py RESULTS.jsonl OUT_PREFIX FSYNC_P50_US FSYNC_P99_US MACHINE COMMAND MODE

Writes OUT_PREFIX.md, OUT_PREFIX.json and OUT_PREFIX-*.svg, prints the markdown, and refreshes
the harness table in perf/README.md (between its two marker lines).
"""

import json
import sys

MODES = ["off", "always", "everysec", "no"]
SCENARIOS = ["set", "get", "set-p16", "get-p16", "mixed-80-20", "set-waitaof", "get-rate",
             "get-rate-writers"]
README = "perf/README.md"
BEGIN = "<!-- perf/run table: begin -->"
END = "<!-- perf/run table: end -->"


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                runs[(r["system"], r["mode"], r["scenario"])] = r
    return runs


def cpu_us_per_request(r):
    n = r["bench"]["requests"]
    return r["cpu_s"] * 1e6 / n if n else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def svg_bars(title, groups, series, unit, path):
    """Grouped bar chart: groups = labels on the x axis, series = [(name, [value per group])]."""
    width, height, left, bottom, top = 760, 340, 70, 60, 40
    plot_w, plot_h = width - left - 20, height - top - bottom
    peak = max([v for _, vals in series for v in vals if v] or [1])
    colors = ["#3b6ea8", "#d08a2c", "#5a9e5a", "#a04a6a"]
    bar_w = plot_w / max(1, len(groups)) / (len(series) + 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
             f'stroke="black"/>',
             f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
             f'text-anchor="middle">{unit}</text>']
    for t in range(5):
        v = peak * t / 4
        y = top + plot_h - plot_h * t / 4
        parts.append(f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{v:,.0f}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{left + plot_w}" y2="{y}" stroke="#ddd"/>')
    for g, label in enumerate(groups):
        x0 = left + g * plot_w / len(groups) + bar_w / 2
        for s, (name, vals) in enumerate(series):
            v = vals[g] or 0
            h = plot_h * v / peak
            x = x0 + s * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w * 0.9:.1f}" '
                         f'height="{h:.1f}" fill="{colors[s % len(colors)]}"/>')
        parts.append(f'<text x="{x0 + bar_w * len(series) / 2:.1f}" y="{top + plot_h + 18}" '
                     f'text-anchor="middle">{label}</text>')
    for s, (name, _) in enumerate(series):
        x = left + s * 150
        parts.append(f'<rect x="{x}" y="{height - 22}" width="12" height="12" '
                     f'fill="{colors[s % len(colors)]}"/>')
        parts.append(f'<text x="{x + 18}" y="{height - 12}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    results, prefix, f50, f99, machine, command, mode = sys.argv[1:8]
    f50, f99 = int(f50), int(f99)
    runs = load(results)

    def get(system, m, scenario):
        return runs.get((system, m, scenario))

    def rps(system, m, scenario):
        r = get(system, m, scenario)
        return r["bench"]["throughput_rps"] if r else None

    def lat(system, m, scenario, q):
        r = get(system, m, scenario)
        return r["bench"]["latency_us"][q] if r else None

    lines = [f"### perf/run ({mode})", "",
             f"Command: `{command}`. Machine: {machine}. Bare 4 KiB append + fdatasync in the "
             f"same directory: p50 {f50} µs, p99 {f99} µs. Ratios are corekv / Valkey in this run.",
             ""]

    rows = []
    for m in MODES:
        for sc in ["set", "get", "set-p16", "get-p16", "mixed-80-20"]:
            ck, vk = rps("corekv", m, sc), rps("valkey", m, sc)
            cc = get("corekv", m, sc)
            vc = get("valkey", m, sc)
            ccpu = cpu_us_per_request(cc) if cc else None
            vcpu = cpu_us_per_request(vc) if vc else None
            rows.append([m, sc, fmt(ck), fmt(vk), fmt(ratio(ck, vk), 2), fmt(ccpu, 2),
                         fmt(vcpu, 2), fmt(ratio(ccpu, vcpu), 2)])
    lines += ["#### Throughput and server CPU per request", "",
              table(["AOF", "scenario", "corekv req/s", "Valkey req/s", "ratio",
                     "corekv CPU µs/req", "Valkey CPU µs/req", "CPU ratio"], rows), ""]

    rows = []
    for m in MODES:
        for sc in SCENARIOS:
            for system in ["corekv", "valkey"]:
                r = get(system, m, sc)
                if not r:
                    continue
                l = r["bench"]["latency_us"]
                extra = ""
                if r["fsyncs"]:
                    extra = (f"{r['fsyncs'] / r['wall_s']:,.0f} fsync/s, "
                             f"{r['records_synced'] / r['fsyncs']:.1f} writes/fsync")
                rows.append([m, sc, system, fmt(l["p50"]), fmt(l["p99"]), fmt(l["p99_9"]),
                             fmt(l["p99_99"]), fmt(l["max"]), r["bench"]["errors"],
                             r["bench"]["missed_acks"], extra])
    lines += ["#### Latency (µs) and fsyncs", "",
              table(["AOF", "scenario", "system", "p50", "p99", "p99.9", "p99.99", "max",
                     "errors", "missed acks", "fsyncs (corekv INFO)"], rows), ""]

    # Targets measurable in this run.
    targets = []
    cpu = [ratio(cpu_us_per_request(get("corekv", "off", sc)),
                 cpu_us_per_request(get("valkey", "off", sc)))
           for sc in ["set", "get"] if get("corekv", "off", sc) and get("valkey", "off", sc)]
    if cpu:
        worst = max(cpu)
        targets.append(["server CPU per request, SET/GET unpipelined, AOF off", "≤ 0.5× Valkey",
                        f"{worst:.2f} (worst of SET, GET)", "yes" if worst <= 0.5 else "no"])
    a, e = rps("corekv", "always", "set"), rps("corekv", "everysec", "set")
    if a and e:
        targets.append(["SET throughput `always` / `everysec`", "≥ 0.95", f"{a / e:.2f}",
                        "yes" if a / e >= 0.95 else "no"])
    for m in ["always", "everysec", "no"]:
        p = lat("corekv", m, "set-waitaof", "p50")
        if p is not None:
            # The unit's latency includes its SET; the WAITAOF alone is shorter.
            targets.append([f"SET + WAITAOF 1 0 0 p50 / bare fdatasync, `{m}`", "≤ 1.5",
                            f"{p / f50:.2f} (includes the SET)",
                            "yes" if p / f50 <= 1.5 else "no"])
    quiet, loaded = lat("corekv", "always", "get-rate", "p99"), lat("corekv", "always",
                                                                      "get-rate-writers", "p99")
    if quiet and loaded:
        targets.append(["GET p99 at a fixed rate with `always` writers / without", "≤ 1.2",
                        f"{loaded / quiet:.2f}", "yes" if loaded / quiet <= 1.2 else "no"])
    for sc in ["get", "get-p16"]:
        on, off = get("corekv", "off", sc), get("corekv", "off", sc + "-notrack")
        if on and off:
            cost = ratio(cpu_us_per_request(on), cpu_us_per_request(off))
            targets.append([f"latency tracking's cost: CPU per request on / off, {sc}",
                            "no measurable cost", f"{cost:.2f}",
                            "yes" if cost is not None and cost <= 1.05 else "no"])
    lines += ["#### Targets", "", table(["target", "wanted", "measured", "met"], targets), "",
              "Memory per key and replay time are measured by `perf/core-compare.sh` and "
              "`perf/durability-compare.sh` (run by `perf/run` without `--quick`).", ""]

    groups = [m for m in MODES]
    for sc in ["set", "get"]:
        svg_bars(f"{sc.upper()}, 50 connections, unpipelined: requests/s by AOF mode", groups,
                 [(s, [rps(s, m, sc) for m in MODES]) for s in ["corekv", "valkey"]],
                 "requests/s", f"{prefix}-{sc}-throughput.svg")
    qs = ["p50", "p99", "p99_9", "p99_99", "max"]
    svg_bars("GET at a fixed rate, `always`, with writers: latency percentiles (µs)",
             ["p50", "p99", "p99.9", "p99.99", "max"],
             [(s, [lat(s, "always", "get-rate-writers", q) for q in qs])
              for s in ["corekv", "valkey"]], "µs", f"{prefix}-get-latency.svg")
    svg_bars("SET + WAITAOF 1 0 0 p50 against a bare fdatasync (µs)", ["always", "everysec", "no"],
             [("corekv", [lat("corekv", m, "set-waitaof", "p50") for m in
                          ["always", "everysec", "no"]]),
              ("valkey", [lat("valkey", m, "set-waitaof", "p50") for m in
                          ["always", "everysec", "no"]]),
              ("bare fdatasync", [f50, f50, f50])], "µs", f"{prefix}-waitaof.svg")
    lines += [f"Plots: `{prefix}-set-throughput.svg`, `{prefix}-get-throughput.svg`, "
              f"`{prefix}-get-latency.svg`, `{prefix}-waitaof.svg`.", ""]

    markdown = "\n".join(lines)
    with open(prefix + ".md", "w") as f:
        f.write(markdown + "\n")
    with open(prefix + ".json", "w") as f:
        json.dump({"machine": machine, "command": command, "mode": mode,
                   "fsync_us": {"p50": f50, "p99": f99},
                   "runs": list(runs.values()), "targets": targets}, f, indent=1)
    with open(README) as f:
        readme = f.read()
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme = head + BEGIN + "\n" + markdown + "\n" + END + tail
        with open(README, "w") as f:
            f.write(readme)
    print(markdown)


if __name__ == "__main__":
    main()
