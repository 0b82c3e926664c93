"""Can the steps of a plan be filled jointly? A pure check, for routing, approvals, reloads,
`accord policy check` and anything that explains a decision.

A person decides a request once, so nobody serves on two of its steps; a step of
`min_approvals` n needs n distinct people; the requester never approves. Each step alone
may have enough eligible people while the steps together do not (carol is an owner and an
admin: if she fills the owners' step, two admins from {carol, frank} cannot be found).
Filling the steps is a bipartite b-matching of people to steps, each step taking
`min_approvals` people and each person at most one step: a maximum flow, found here by
augmenting along alternating paths (a breadth-first search per missing approval, so
O(approvals x edges)). People who already approved a step are fixed there: they count for
it and serve nowhere else.

When the steps cannot be filled, the failed search names why (Hall's theorem): the steps it
reached, together, need more approvals than there are people free to give them. That set of
steps, its people, and who is missing from it (the requester, people who decided another
step) are what a message names.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Step:
    """One step to fill: who may approve it, how many distinct people it needs, and who
    already approved it (they count here and can serve on no other step)."""

    eligible: frozenset[str]
    min_approvals: int = 1
    name: str | None = None
    approved: frozenset[str] = frozenset()

    def label(self, index: int) -> str:
        return f"step {index + 1}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class Shortfall:
    """Steps that, together, need more approvals than there are people free to give them."""

    steps: tuple[int, ...]  # their indices, ascending
    missing: int  # the approvals those steps still need
    people: tuple[str, ...]  # everyone still free to approve one of them: fewer than `missing`
    excluded: tuple[str, ...] = ()  # eligible for them but excluded (the requester)
    taken: tuple[tuple[str, int], ...] = ()  # eligible for them, but decided step (index)


@dataclass(frozen=True)
class Filling:
    """Who would fill each step (those who approved it first, then the people proposed), and
    when the steps cannot all be filled, the shortfall that says why."""

    assignment: tuple[tuple[str, ...], ...]
    shortfall: Shortfall | None = None
    steps: tuple[Step, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.shortfall is None


def fill(steps: Sequence[Step], *, exclude: Collection[str] = ()) -> Filling:
    """A way to fill every step with distinct people, none of them in `exclude`, or the
    shortfall that makes it impossible."""
    steps = tuple(steps)
    banned = frozenset(exclude)
    decided: dict[str, int] = {}
    for i, s in enumerate(steps):
        for p in sorted(s.approved):
            decided.setdefault(p, i)
    need = [max(0, s.min_approvals - len(s.approved)) for s in steps]
    # Sorted: the same input gives the same filling and the same message.
    adj = [sorted(s.eligible - banned - decided.keys()) for s in steps]
    owner: dict[str, int] = {}
    got: list[set[str]] = [set() for _ in steps]
    # Per step, how far into its people everyone is taken: a person once taken stays taken
    # (paths only move them between steps), so the search for a free one resumes there.
    taken_upto = [0] * len(steps)
    shortfall: Shortfall | None = None
    for i in range(len(steps)):
        while len(got[i]) < need[i]:
            reached = _augment(i, adj, owner, got, taken_upto)
            if reached is None:
                continue
            if shortfall is None:
                shortfall = _shortfall(steps, reached, need, got, banned, decided)
            break
    assignment = tuple(
        tuple(sorted(s.approved)) + tuple(sorted(got[i])) for i, s in enumerate(steps))
    return Filling(assignment, shortfall, steps)


def _augment(start: int, adj: list[list[str]], owner: dict[str, int],
             got: list[set[str]], taken_upto: list[int]) -> list[int] | None:
    """Give step `start` one more person along an alternating path: None when done, else
    the steps the search reached (none of them touches a free person)."""
    prev: dict[int, tuple[int, str]] = {}
    seen = {start}
    queue = deque([start])
    order = [start]
    while queue:
        j = queue.popleft()
        people = adj[j]
        n = taken_upto[j]
        while n < len(people) and people[n] in owner:
            n += 1
        taken_upto[j] = n
        if n < len(people):  # free: p joins j, and each step on the path passes one back
            p = people[n]
            owner[p] = j
            got[j].add(p)
            while j != start:
                back, moved = prev[j]
                got[j].discard(moved)
                got[back].add(moved)
                owner[moved] = back
                j = back
            return None
        for p in people:  # all taken: try to move each one's step to someone else
            k = owner[p]
            if k not in seen:
                seen.add(k)
                prev[k] = (j, p)
                queue.append(k)
                order.append(k)
    return order


def _shortfall(steps: tuple[Step, ...], reached: list[int], need: list[int],
               got: list[set[str]], banned: frozenset[str],
               decided: Mapping[str, int]) -> Shortfall:
    # Every person eligible for a reached step is held by a reached step (else the path
    # would have gone on), and the first of them is short: together they need more.
    idx = tuple(sorted(reached))
    people = sorted(set().union(*(got[i] for i in idx)))
    eligible: set[str] = set().union(*(steps[i].eligible for i in idx))
    return Shortfall(
        steps=idx,
        missing=sum(need[i] for i in idx),
        people=tuple(people),
        excluded=tuple(sorted(eligible & banned)),
        taken=tuple(sorted((p, decided[p]) for p in eligible
                           if p in decided and decided[p] not in idx)),
    )


def with_approval(steps: Sequence[Step], index: int, person: str) -> tuple[Step, ...]:
    """The steps once `person` approved step `index`."""
    out = list(steps)
    out[index] = replace(out[index], approved=out[index].approved | {person})
    return tuple(out)


def stranded_by(steps: Sequence[Step], index: int, person: str, *,
                exclude: Collection[str] = ()) -> Filling | None:
    """What approving step `index` as `person` would leave unfillable: None when the
    approval keeps (or finds) the request completable, or when it was not completable before
    it either (refusing the approval would save nothing)."""
    if not fill(steps, exclude=exclude).ok:
        return None
    after = fill(with_approval(steps, index, person), exclude=exclude)
    return None if after.ok else after


def safe_approvers(steps: Sequence[Step], index: int, *, exclude: Collection[str] = (),
                   candidates: Iterable[str] | None = None) -> list[str]:
    """Who may approve step `index` now and leave every step fillable."""
    taken = {p for s in steps for p in s.approved}
    pool = steps[index].eligible if candidates is None else frozenset(candidates)
    out = []
    for p in sorted(pool - frozenset(exclude) - taken):
        if fill(with_approval(steps, index, p), exclude=exclude).ok:
            out.append(p)
    return out


# ---------------------------------------------------------------- words


def names(people: Sequence[str], *, limit: int = 8, conj: str = "and") -> str:
    """alice; alice and bob; alice, bob and carol; ... and N more (`conj` "or": alice or
    bob)."""
    shown = list(people[:limit])
    more = len(people) - len(shown)
    if more:
        return ", ".join(shown) + f" {conj} {more} more"
    if len(shown) <= 1:
        return "".join(shown)
    return ", ".join(shown[:-1]) + f" {conj} " + shown[-1]


def steps_in_words(steps: Sequence[Step], indices: Iterable[int]) -> str:
    idx = list(indices)
    if len(idx) == 1:
        return steps[idx[0]].label(idx[0])
    labels = [steps[i].label(i).removeprefix("step ") for i in idx]
    return "steps " + names(labels, limit=len(labels))


def describe(filling: Filling, *, requester: str | None = None) -> str:
    """Why the steps cannot be filled, in words: which steps, how many approvals they still
    need, who can still give them, and who cannot (the requester, people who decided another
    step)."""
    short = filling.shortfall
    if short is None:
        return "every step can be filled"
    steps = filling.steps
    started = any(steps[i].approved for i in short.steps)
    plural = len(short.steps) > 1
    need = (f"{short.missing} {'more ' if started else ''}approval"
            f"{'s' if short.missing != 1 else ''}")
    if short.missing > 1 or plural:
        need += " from distinct people"
    them = "them" if short.missing > 1 else "it"
    who = (f"only {names(short.people)} can give {them}" if short.people
           else f"nobody can give {them}")
    if len(short.people) == 1 and short.missing > 1:
        who = f"only {short.people[0]} can give one"
    out = (f"{steps_in_words(steps, short.steps)} {'need' if plural else 'needs'} {need} "
           f"but {who}")
    why = [f"{p} approved {steps[i].label(i)}" for p, i in short.taken]
    why += [f"{p} is the requester" if p == requester else f"{p} may not approve it"
            for p in short.excluded]
    if why:
        out += ", since " + names(why, limit=len(why))
    return out
