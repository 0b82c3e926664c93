"""Filling the steps of a plan jointly (accord.policy.satisfiable): a person serves on one
step, a step needs min_approvals distinct people, the requester never approves."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest

from accord.policy.satisfiable import (
    Filling,
    Step,
    describe,
    fill,
    safe_approvers,
    stranded_by,
    with_approval,
)


def step(people: str, n: int = 1, name: str | None = None, approved: str = "") -> Step:
    return Step(frozenset(people.split()), n, name, frozenset(approved.split()))


# The issue's plan: orders-db admin under the demo policy of the time.
LEAD, OWNER, ADMINS = step("bob", 1, "lead"), step("carol erin", 1, "owner"), \
    step("carol frank", 2, "admins")
DEMO = [LEAD, OWNER, ADMINS]


def assert_valid(steps: Sequence[Step], f: Filling, exclude: set[str]) -> None:
    """A filling fills each step with enough distinct, eligible, allowed people."""
    assert f.ok
    used = [p for people in f.assignment for p in people]
    assert len(used) == len(set(used))
    for s, people in zip(steps, f.assignment, strict=True):
        assert len(people) >= s.min_approvals
        fresh = set(people) - s.approved
        assert fresh <= s.eligible and not fresh & exclude


def test_the_issues_plan_can_be_filled_for_alice() -> None:
    f = fill(DEMO, exclude={"alice"})
    assert f.ok and f.assignment == (("bob",), ("erin",), ("carol", "frank"))


def test_without_the_requester_two_steps_share_too_few_people() -> None:
    f = fill(DEMO, exclude={"erin"})
    assert f.shortfall is not None
    assert f.shortfall.steps == (1, 2) and f.shortfall.missing == 3
    assert f.shortfall.people == ("carol", "frank") and f.shortfall.excluded == ("erin",)
    assert describe(f, requester="erin") == (
        "steps 2 (owner) and 3 (admins) need 3 approvals from distinct people but only carol "
        "and frank can give them, since erin is the requester")


def test_an_approval_already_given_is_fixed_where_it_is() -> None:
    steps = with_approval(with_approval(DEMO, 0, "bob"), 1, "carol")
    f = fill(steps, exclude={"alice"})
    assert f.shortfall is not None
    assert f.shortfall.steps == (2,) and f.shortfall.people == ("frank",)
    assert f.shortfall.taken == (("carol", 1),)
    assert describe(f, requester="alice") == (
        "step 3 (admins) needs 2 approvals from distinct people but only frank can give one, "
        "since carol approved step 2 (owner)")


def test_carols_approval_of_the_owner_step_would_strand_the_admins() -> None:
    steps = with_approval(DEMO, 0, "bob")
    after = stranded_by(steps, 1, "carol", exclude={"alice"})
    assert after is not None and after.shortfall is not None
    assert after.shortfall.steps == (2,)
    assert stranded_by(steps, 1, "erin", exclude={"alice"}) is None
    assert safe_approvers(steps, 1, exclude={"alice"}) == ["erin"]
    # Nothing to save when it could not be completed before either.
    assert stranded_by(steps, 1, "carol", exclude={"erin"}) is None


def test_augmenting_moves_a_person_the_greedy_choice_took() -> None:
    # x comes first for step 1, but only x can serve step 2: step 1 must take y.
    steps = [step("x y"), step("x")]
    f = fill(steps)
    assert f.assignment == (("y",), ("x",))
    # A longer path: each step hands its person on to the next.
    chain = [step("a b"), step("b c"), step("c d"), step("a")]
    f = fill(chain)
    assert_valid(chain, f, set())
    assert f.assignment[3] == ("a",)


def test_n_of_m_needs_distinct_people_across_steps() -> None:
    assert fill([step("a b c", 2), step("a")]).ok
    f = fill([step("a b c", 2), step("a b")], exclude={"c"})
    assert not f.ok and f.shortfall is not None and f.shortfall.missing == 3


def test_the_shortfall_is_the_steps_that_lack_people_not_the_whole_plan() -> None:
    f = fill([step("x", 1, "one"), step("x", 1, "two"), step("y z w", 2, "three")])
    assert f.shortfall is not None
    assert f.shortfall.steps == (0, 1) and f.shortfall.people == ("x",)
    assert describe(f).startswith("steps 1 (one) and 2 (two) need 2 approvals")


def test_nobody_at_all() -> None:
    f = fill([step("bob")], exclude={"bob"})
    assert describe(f, requester="bob") == (
        "step 1 needs 1 approval but nobody can give it, since bob is the requester")


def test_complete_steps_need_nobody_and_an_approver_since_removed_still_counts() -> None:
    steps = [step("", 1, approved="gone"), step("a b", 2, approved="a")]
    f = fill(steps)
    assert f.ok and f.assignment == (("gone",), ("a", "b"))
    assert fill([step("a", 1, approved="a"), step("a")]).shortfall is not None


def _brute(steps: Sequence[Step], exclude: set[str]) -> bool:
    """Every way to give each step its people, tried one by one."""
    taken = {p for s in steps for p in s.approved}

    def go(i: int, used: frozenset[str]) -> bool:
        if i == len(steps):
            return True
        need = max(0, steps[i].min_approvals - len(steps[i].approved))
        pool = sorted(steps[i].eligible - exclude - taken - used)
        return any(go(i + 1, used | set(c)) for c in itertools.combinations(pool, need))
    return go(0, frozenset())


@pytest.mark.parametrize("seed", range(300))
def test_agrees_with_trying_every_way(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible plans, not secrets
    people = "abcdefg"[: rng.randint(2, 7)]
    steps: list[Step] = []
    decided: set[str] = set()  # a person decides a request once
    for _ in range(rng.randint(1, 5)):
        eligible = "".join(p for p in people if rng.random() < 0.6)
        approved = {p for p in eligible if p not in decided and rng.random() < 0.1}
        decided |= approved
        steps.append(Step(frozenset(eligible), rng.choice((1, 1, 2, 3)), None,
                          frozenset(approved)))
    exclude = {rng.choice(people)} if rng.random() < 0.5 else set()
    f = fill(steps, exclude=exclude)
    assert f.ok == _brute(steps, exclude), steps
    if f.ok:
        assert_valid(steps, f, exclude)
    else:  # Hall's condition fails on the steps named: fewer people than approvals needed
        short = f.shortfall
        assert short is not None and len(short.people) < short.missing
        taken = {p for s in steps for p in s.approved}
        free = set().union(*(steps[i].eligible for i in short.steps)) - exclude - taken
        assert set(short.people) == free
        assert short.missing == sum(
            max(0, steps[i].min_approvals - len(steps[i].approved)) for i in short.steps)


def test_a_ten_step_chain_of_two_hundred_people_each_is_filled() -> None:
    people = [f"u{i:03}" for i in range(400)]
    steps = [Step(frozenset(people[i * 20: i * 20 + 200]), 3) for i in range(10)]
    f = fill(steps, exclude={"u000"})
    assert_valid(steps, f, {"u000"})
    tight = [Step(frozenset(people[:200]), 20) for _ in range(10)]
    assert fill(tight).ok
    over = [*tight, Step(frozenset(people[:1]), 1)]
    short = fill(over).shortfall
    assert short is not None and short.missing == 201 and len(short.people) == 200
