"""The HTML report's stylesheet: inline, no fonts or images from anywhere, print-friendly."""

from __future__ import annotations

STYLESHEET = """\
:root {
  --fg: #1f2328; --bg: #ffffff; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa;
  --violation: #b91c1c; --warn: #b45309; --allow: #15803d; --audit: #57606a; --conn: #9db4cc;
}
@media (prefers-color-scheme: dark) {
  :root {
    --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #3d444d; --panel: #151b23;
    --violation: #f85149; --warn: #d29922; --allow: #3fb950; --audit: #9198a1; --conn: #4d6a8a;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0 auto; padding: 1.5rem; max-width: 1400px; color: var(--fg); background: var(--bg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
}
h1 { font-size: 1.6rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 2rem 0 .6rem; border-bottom: 1px solid var(--line); }
.meta, footer, .empty { color: var(--muted); overflow-wrap: anywhere; }
footer { margin-top: 2rem; font-size: .85rem; }
.filters { display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; margin: .5rem 0; }
.filters div { display: flex; gap: .4rem; min-width: 0; }
.filters dt { color: var(--muted); }
.filters dd { margin: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; margin-top: 1rem; }
.card {
  min-width: 8rem; padding: .6rem .9rem; border: 1px solid var(--line); border-radius: 6px;
  background: var(--panel); color: var(--muted);
}
.card.wide { flex: 1 1 16rem; min-width: 0; }
.card .big { font-size: 1.6rem; font-weight: 600; color: var(--fg); }
.card .span { color: var(--fg); overflow-wrap: anywhere; }
.card.v-violation .big { color: var(--violation); }
.card.v-warn .big { color: var(--warn); }
.card.v-allow .big { color: var(--allow); }
svg.chart { display: block; width: 100%; max-width: 900px; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: var(--fg); }
svg .axis, svg .note { fill: var(--muted); }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .bar { fill: var(--violation); }
svg .conn { fill: var(--conn); }
svg .hit { fill: transparent; }
svg g:hover .hit { fill: var(--panel); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .25rem 0; }
th, td {
  padding: .25rem .6rem; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; max-width: 32rem; overflow-wrap: break-word;
}
th { background: var(--panel); position: sticky; top: 0; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.rows td { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
table.rows td, table.rows th { font-size: .82rem; }
.v-violation { color: var(--violation); font-weight: 600; }
.v-warn { color: var(--warn); font-weight: 600; }
.v-allow { color: var(--allow); }
.v-audit { color: var(--audit); }
.barcell { width: 40%; min-width: 8rem; }
.hbar { display: block; height: .7rem; min-width: 2px; background: var(--violation); }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  :root { --fg: #000; --bg: #fff; --muted: #444; --line: #bbb; --panel: #f3f3f3; }
  body { max-width: none; padding: 0; font-size: 9pt; color: #000; background: #fff; }
  .scroll { overflow: visible; }
  th { position: static; }
  thead { display: table-header-group; }
  tr, .card, svg.chart { break-inside: avoid; }
  h2 { break-after: avoid; }
  .hbar, svg .bar { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""
