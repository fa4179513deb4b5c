"""Draw a workflow DAG given as DOT (``snakemake --rulegraph``/``--dag``, ``dvc dag --dot``) as a PNG.

Needs only matplotlib (no Graphviz ``dot`` binary): nodes are placed in layers by longest path
from the sources, ordered within a layer by the barycentre of their parents, and coloured by
the ``workflow/rules/*.smk`` file that defines their rule (DVC stage names such as
``train_binary_resnet18`` map to their rule by prefix)::

    snakemake all --rulegraph --configfile config/demo.yaml | python docs/render_dag.py \\
        --title "Snakemake rule graph" -o docs/rulegraph.png
    dvc dag --dot | python docs/render_dag.py --title "DVC stages" -o docs/dvc_dag.png
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

_ID = r'(?:"[^"]+"|\w+)'
_NODE = re.compile(rf'^\s*({_ID})\s*(?:\[(.*)\])?\s*;?\s*$')
_EDGE = re.compile(rf'^\s*({_ID})\s*->\s*({_ID})\s*(?:\[.*\])?\s*;?\s*$')
_LABEL = re.compile(r'label\s*=\s*"([^"]*)"')


def parse_dot(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Node labels (in order of appearance) and edges (as labels) of a simple DOT digraph."""
    labels: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.endswith("{") or line == "}" or line.startswith(("graph", "node", "edge")):
            continue
        m = _EDGE.match(line)
        if m:
            a, b = (x.strip('"') for x in m.groups())
            labels.setdefault(a, a)
            labels.setdefault(b, b)
            edges.append((a, b))
            continue
        m = _NODE.match(line)
        if m:
            node = m.group(1).strip('"')
            label = _LABEL.search(m.group(2) or "")
            labels[node] = label.group(1) if label else labels.get(node, node)
    if not labels:
        raise ValueError("no nodes found: expected DOT from `snakemake --rulegraph` or `dvc dag --dot`")
    return list(labels.values()), [(labels[a], labels[b]) for a, b in edges]


def layers(nodes: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """Nodes by layer (longest path from a source), each layer ordered to shorten edges."""
    parents: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        parents[b].append(a)
    depth: dict[str, int] = {}

    def visit(n: str, path: tuple[str, ...] = ()) -> int:
        if n in path:
            raise ValueError(f"the graph has a cycle through {n!r}")
        if n not in depth:
            depth[n] = 1 + max((visit(p, path + (n,)) for p in parents[n]), default=-1)
        return depth[n]

    for n in nodes:
        visit(n)
    rows: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for n in nodes:
        rows[depth[n]].append(n)
    x: dict[str, float] = {}
    for row in rows:                          # barycentre of the parents' positions
        row.sort(key=lambda n: sum(x[p] for p in parents[n]) / len(parents[n])
                 if parents[n] else 0.0)
        x.update(positions(row))
    return rows


def positions(row: list[str]) -> dict[str, float]:
    """x of each node of a layer: one unit apart, centred on 0."""
    return {n: i - (len(row) - 1) / 2 for i, n in enumerate(row)}


def rule_groups(rules_dir: Path) -> dict[str, str]:
    """Rule name -> the stem of the ``.smk`` file that defines it."""
    groups = {}
    for smk in sorted(rules_dir.glob("*.smk")):
        for m in re.finditer(r"^(?:rule (\w+)|use rule \w+ as (\w+))", smk.read_text(), re.M):
            groups[m.group(1) or m.group(2)] = smk.stem
    return groups


def group_of(node: str, groups: dict[str, str]) -> str:
    matches = [r for r in groups if node == r or node.startswith(r + "_")]
    return groups[max(matches, key=len)] if matches else "target"


def _tint(colour, strength: float = 0.3) -> tuple[float, float, float]:
    """An opaque light version of ``colour`` (edges pass behind the boxes)."""
    return tuple(1 - strength * (1 - c) for c in colour[:3])


def render(dot: str, out: Path, title: str, rules_dir: Path = Path("workflow/rules")) -> Path:
    nodes, edges = parse_dot(dot)
    rows = layers(nodes, edges)
    groups = rule_groups(rules_dir)
    names = sorted({group_of(n, groups) for n in nodes})
    palette = plt.get_cmap("tab10")
    colour = {g: palette(i % 10) for i, g in enumerate(names)}
    width = max(len(r) for r in rows)
    xy = {n: (x, -y) for y, row in enumerate(rows) for n, x in positions(row).items()}
    fig, ax = plt.subplots(figsize=(2.2 * width + 1.8, 0.5 + 0.9 * len(rows)))
    box_w, box_h = 0.86, 0.36
    for a, b in edges:
        ax.annotate("", xy=(xy[b][0], xy[b][1] + box_h / 2), xytext=(xy[a][0], xy[a][1] - box_h / 2),
                    arrowprops={"arrowstyle": "-|>", "color": "0.5", "lw": 0.9,
                                "shrinkA": 0, "shrinkB": 0}, zorder=1)
    for n, (x, y) in xy.items():
        c = colour[group_of(n, groups)]
        ax.add_patch(FancyBboxPatch((x - box_w / 2, y - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0.02", facecolor=_tint(c),
                                    edgecolor=c, lw=1.4, zorder=2))
        ax.text(x, y, n, ha="center", va="center", fontsize=8, zorder=3)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=_tint(colour[g]), edgecolor=colour[g])
               for g in names]
    ax.legend(handles, [f"{g}.smk" if g != "target" else g for g in names], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=8, title="defined in", title_fontsize=8,
              frameon=False)
    ax.set_xlim(-width / 2, width / 2)
    ax.set_ylim(-len(rows) + 0.5, 0.5)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dot", nargs="?", help="DOT file (default: stdin)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="PNG to write")
    parser.add_argument("--title", default="Workflow DAG")
    parser.add_argument("--rules-dir", type=Path, default=Path("workflow/rules"))
    args = parser.parse_args(argv)
    text = Path(args.dot).read_text() if args.dot else sys.stdin.read()
    try:
        render(text, args.output, args.title, args.rules_dir)
    except ValueError as err:
        print(f"render_dag: {args.dot or 'stdin'}: {err}", file=sys.stderr)
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
