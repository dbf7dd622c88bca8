"""No new import cycle inside the package: grimp's import graph, cycles found as
strongly connected components over modules (function-level imports included,
``TYPE_CHECKING`` ones left out: they never run).

The cycles still open are listed; a cycle may shrink or go, never appear or grow.
"""

from __future__ import annotations

import grimp

PACKAGE = "django_qtasks"

# Still open (docs/architecture.md#the-map): the pool child reaches the project's app
# through the package, which builds the worker side through api/queue_tasks.py; and
# DjangoStorage becomes MySQLStorage, its own subclass, on MariaDB and MySQL.
KNOWN = [
    {
        "django_qtasks",
        "django_qtasks.api.queue_tasks",
        "django_qtasks.worker.starter",
        "django_qtasks.worker.pool",
        "django_qtasks.worker.pool_child",
    },
]


def import_cycles() -> list[set[str]]:
    """Each set of modules that import each other, through any chain (Tarjan's SCC)."""
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=True, cache_dir=None)
    modules = {m for m in graph.modules if not m.startswith(f"{PACKAGE}.migrations")}
    edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return cycles


def test_no_import_cycle_but_the_known_ones() -> None:
    new = [sorted(c) for c in import_cycles() if not any(c <= known for known in KNOWN)]
    assert not new, f"import cycles inside {PACKAGE}: {new}"
