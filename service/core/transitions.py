"""Who may move a session's status, from what, to what: the one table.

Each status has owners. The status watch owns what the cluster says (waking, running,
sleeping, failed); the archiver and a restore own `archived`; the reconciler may only call a
session whose objects are gone `failed`; a delete makes anything `terminating`. The API only
asks: a wake may turn a sleeping (or just created) session `waking`, a sleep may turn an awake
one `sleeping` — it never overwrites what the watch derived from the cluster.

The table is enforced where status is written: every Lua script that writes a status checks
it against the status it finds *at that moment* (`store/lua/lib/status.lua`, generated from
`lua_table()`), so a writer acting on a stale read is refused instead of overwriting a newer
truth (a wake that read `sleeping` cannot write `waking` over the `running` the watch wrote
meanwhile).
"""

from __future__ import annotations

from enum import StrEnum

STATUSES = ("created", "waking", "running", "sleeping", "archived", "failed", "terminating")
# Sessions counted as active in /metrics.
ACTIVE_STATUSES = ("created", "waking", "running")
# Sessions whose bundle is in the cluster and whose status the watch derives from it.
IN_CLUSTER = ("created", "waking", "running", "sleeping", "failed")


class Actor(StrEnum):
    API = "api"  # wake, sleep, a chat's wake (sessions)
    WATCH = "watch"  # the status watch: Deployment and Pod events (worker)
    ARCHIVER = "archiver"  # an idle session's bundle swept (tiers)
    RESTORE = "restore"  # an archived session's bundle applied again (tiers)
    RECONCILER = "reconciler"  # a record whose Deployment is gone (worker)
    DELETE = "delete"  # DELETE /session/{id} (sessions)


# actor -> from -> the statuses it may move a session to.
TRANSITIONS: dict[Actor, dict[str, frozenset[str]]] = {
    Actor.WATCH: {old: frozenset(("waking", "running", "sleeping", "failed"))
                  for old in IN_CLUSTER},
    Actor.API: {
        "created": frozenset(("waking", "sleeping")),
        "sleeping": frozenset(("waking",)),
        "waking": frozenset(("sleeping",)),
        "running": frozenset(("sleeping",)),
        "failed": frozenset(("sleeping",)),
    },
    Actor.ARCHIVER: {old: frozenset(("archived",)) for old in IN_CLUSTER},
    Actor.RESTORE: {"archived": frozenset(("waking",))},
    Actor.RECONCILER: {old: frozenset(("failed",))
                       for old in ("created", "waking", "running", "sleeping")},
    Actor.DELETE: {old: frozenset(("terminating",)) for old in STATUSES},
}


def may_move(actor: Actor, old: str, new: str) -> bool:
    """Whether `actor` may move a session from `old` to `new`. Staying put is allowed to the
    watch (it refreshes replicas and the pod's address) and to whoever may reach `new`."""
    if old == new:
        return (actor is Actor.WATCH and old in IN_CLUSTER) or any(
            new in targets for targets in TRANSITIONS[actor].values())
    return new in TRANSITIONS[actor].get(old, frozenset())


def lua_table() -> str:
    """The table as a Lua expression, put in front of every script by the store's loader:
    `TRANSITIONS[actor][old][new] == true` when allowed (staying put: see may_move)."""
    actors = []
    for actor, moves in TRANSITIONS.items():
        rows = ", ".join(
            f"{old} = {{{', '.join(f'{new} = true' for new in sorted(targets))}}}"
            for old, targets in moves.items())
        reachable = sorted({new for targets in moves.values() for new in targets})
        stays = sorted(set(IN_CLUSTER) if actor is Actor.WATCH else reachable)
        actors.append(f"{actor.value} = {{moves = {{{rows}}}, "
                      f"stays = {{{', '.join(f'{s} = true' for s in stays)}}}}}")
    return "{" + ", ".join(actors) + "}"


def markdown_table() -> str:
    """The table for the docs (a test checks the docs show this one)."""
    lines = ["| from \\ to | " + " | ".join(STATUSES) + " |",
             "|---|" + "---|" * len(STATUSES)]
    for old in STATUSES:
        cells = []
        for new in STATUSES:
            who = [actor.value for actor in Actor
                   if old != new and new in TRANSITIONS[actor].get(old, frozenset())]
            cells.append(", ".join(who))
        lines.append(f"| **{old}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)
