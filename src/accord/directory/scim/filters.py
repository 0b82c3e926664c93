"""SCIM filters (RFC 7644 §3.4.2.2) as SQLAlchemy conditions, with bound parameters.

scim2-models parses the filter and checks it against the published models (syntax, an
operator the attribute's type does not take, an attribute no schema declares: 400
invalidFilter). This walks the tree it gives into a WHERE clause. An attribute Accord does
not store, or stores without a way to search it, is refused with invalidFilter too: a term
is never dropped, which would widen the result.

Every condition is two-valued (never NULL), so `not` and `ne` treat an absent value the way
`ScimFilter.match` does: `ne` and `not (... eq ...)` match it, everything else does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scim2_models import InvalidFilterException, ScimFilter
from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterVisitor,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
    coerce_value,
)
from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute

from accord.directory.scim.models import ENTERPRISE_SCHEMA, GROUP_SCHEMA, USER_SCHEMA
from accord.directory.service import key
from accord.people.models import DirectoryGroup, DirectoryMember, DirectoryUser

Op = CompareOperator


def _lower(text: str) -> str:
    return text.lower()


@dataclass(frozen=True)
class Attr:
    """A searchable attribute: the SQL expression compared and how values are prepared."""

    expr: ColumnElement[Any] | InstrumentedAttribute[Any]
    # Case-insensitive attributes compare a folded expression to the folded value; None
    # for case-exact ones and for non-strings.
    fold: Callable[[str], str] | None = None
    # The expression is a column of a group's members: conditions run in EXISTS.
    member: bool = False
    # A complex attribute held in several columns: only `pr` applies, and this is it.
    present: ColumnElement[bool] | None = None


def _insensitive(column: InstrumentedAttribute[Any]) -> Attr:
    return Attr(func.lower(column), _lower)


_U = USER_SCHEMA + ":"
_E = ENTERPRISE_SCHEMA + ":"
_G = GROUP_SCHEMA + ":"

USER_ATTRS: dict[str, Attr] = {
    _U + "id": Attr(DirectoryUser.id),
    _U + "externalId": Attr(DirectoryUser.external_id),
    _U + "userName": Attr(DirectoryUser.name, key),  # the Accord name: userName case-folded
    _U + "displayName": _insensitive(DirectoryUser.display_name),
    _U + "active": Attr(DirectoryUser.active),
    _U + "name": Attr(DirectoryUser.given_name, present=or_(
        and_(DirectoryUser.given_name.is_not(None), DirectoryUser.given_name != ""),
        and_(DirectoryUser.family_name.is_not(None), DirectoryUser.family_name != ""))),
    _U + "name.givenName": _insensitive(DirectoryUser.given_name),
    _U + "name.familyName": _insensitive(DirectoryUser.family_name),
    # One address per person: `emails.x` and `emails[...]` read the same row.
    _U + "emails": _insensitive(DirectoryUser.email),
    _U + "emails.value": _insensitive(DirectoryUser.email),
    _U + "emails.type": _insensitive(DirectoryUser.email_type),
    _U + "meta.created": Attr(DirectoryUser.created_at),
    _U + "meta.lastModified": Attr(DirectoryUser.updated_at),
    _E + "employeeNumber": _insensitive(DirectoryUser.employee_number),
    _E + "department": _insensitive(DirectoryUser.department),
    _E + "manager": Attr(DirectoryUser.manager_id),
    _E + "manager.value": Attr(DirectoryUser.manager_id),
}

GROUP_ATTRS: dict[str, Attr] = {
    _G + "id": Attr(DirectoryGroup.id),
    _G + "externalId": Attr(DirectoryGroup.external_id),
    _G + "displayName": Attr(DirectoryGroup.name_key, key),
    _G + "meta.created": Attr(DirectoryGroup.created_at),
    _G + "meta.lastModified": Attr(DirectoryGroup.updated_at),
    _G + "members": Attr(DirectoryMember.user_id, member=True),
    _G + "members.value": Attr(DirectoryMember.user_id, member=True),
}

_VALUE_PATHS = {_U + "emails", _G + "members"}  # multi-valued attributes `x[...]` may select


class ToSql(FilterVisitor[ColumnElement[bool]]):
    """One filter, bound to its model, into a condition on DirectoryUser or DirectoryGroup."""

    def __init__(self, flt: ScimFilter[Any], attrs: dict[str, Attr], *, dialect: str,
                 within: str | None = None) -> None:
        self.flt, self.attrs, self.dialect = flt, attrs, dialect
        self.within = within  # inside `emails[...]`/`members[...]`: paths are relative to it

    # ---------------------------------------------------------------- resolving

    def _attr(self, path: AttrPath, *, comparison: bool) -> tuple[Any, Attr]:
        if self.within is not None:
            if path.sub_attr is not None or path.uri is not None:
                raise InvalidFilterException(detail=f"{path} cannot be nested in {self.within}")
            path = AttrPath(self.within, path.attr)
        binding = (self.flt.resolve_comparison(path) if comparison
                   else self.flt.resolve(path))
        attr = self.attrs.get(binding.urn) if binding is not None else None
        if binding is None or attr is None:
            raise InvalidFilterException(detail=f"filtering on {path} is not supported")
        return binding, attr

    def _members(self, condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return exists(select(DirectoryMember.user_id).where(
            DirectoryMember.group_id == DirectoryGroup.id, condition))

    def _wrap(self, attr: Attr, condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return self._members(condition) if attr.member and self.within is None else condition

    # ------------------------------------------------------------------ visits

    def visit_comparison(self, node: Comparison) -> ColumnElement[bool]:
        binding, attr = self._attr(node.attr_path, comparison=True)
        if attr.present is not None:
            raise InvalidFilterException(detail=f"{node.attr_path} is compared by its "
                                         "sub-attributes")
        value = coerce_value(binding, node.value, node.op)
        if isinstance(value, str) and attr.fold is not None:
            value = attr.fold(value)
        col = attr.expr
        if node.op == Op.ne:
            if attr.member and self.within is None:  # no member is that one
                return not_(self._members(col == value))
            return col.is_not(None) if value is None else or_(col.is_(None), col != value)
        if value is None:
            return self._wrap(attr, col.is_(None) if node.op == Op.eq else false())
        if node.op in (Op.co, Op.sw, Op.ew):
            condition = self._like(col, node.op, str(value), exact=attr.fold is None)
        else:
            compare: dict[Op, Callable[[], ColumnElement[bool]]] = {
                Op.eq: lambda: col == value, Op.gt: lambda: col > value,
                Op.ge: lambda: col >= value, Op.lt: lambda: col < value,
                Op.le: lambda: col <= value}
            condition = compare[node.op]()
        return self._wrap(attr, and_(col.is_not(None), condition))

    def _like(self, col: ColumnElement[Any] | InstrumentedAttribute[Any], op: Op, value: str,
              *, exact: bool) -> ColumnElement[bool]:
        like: dict[Op, Callable[..., ColumnElement[bool]]] = {
            Op.co: col.contains, Op.sw: col.startswith, Op.ew: col.endswith}
        pattern = like[op](value, autoescape=True)
        if not exact or self.dialect == "postgresql":
            return pattern
        # SQLite's LIKE (and MariaDB's collations) ignore case: a case-exact attribute
        # (externalId, id) is also compared character for character.
        n = len(value)
        exactly: dict[Op, Callable[[], ColumnElement[bool]]] = {
            Op.sw: lambda: func.substr(col, 1, n) == value,
            Op.ew: lambda: func.substr(col, func.length(col) - n + 1) == value,
            Op.co: lambda: func.instr(col, value) > 0}
        check = exactly[op]()
        return and_(pattern, check)

    def visit_present(self, node: Present) -> ColumnElement[bool]:
        binding, attr = self._attr(node.attr_path, comparison=False)
        if attr.present is not None:
            return attr.present
        col = attr.expr
        present: ColumnElement[bool] = col.is_not(None)
        if binding.target_type is str or attr.fold is not None:
            present = and_(present, col != "")
        return self._wrap(attr, present)

    def visit_not(self, node: Not) -> ColumnElement[bool]:
        return not_(self.visit(node.expr))

    def visit_logical_expr(self, node: LogicalExpr) -> ColumnElement[bool]:
        terms = [self.visit(t) for t in node.terms]
        return and_(true(), *terms) if node.op == LogicalOperator.and_ else \
            or_(false(), *terms)

    def visit_value_path(self, node: ValuePath) -> ColumnElement[bool]:
        binding = self.flt.resolve(node.attr_path)
        if self.within is not None or binding is None or binding.urn not in _VALUE_PATHS:
            raise InvalidFilterException(detail=f"filtering on {node} is not supported")
        inner = ToSql(self.flt, self.attrs, dialect=self.dialect,
                      within=node.attr_path.attr).visit(node.val_filter)
        if binding.urn == _G + "members":
            return self._members(inner)
        return and_(DirectoryUser.email.is_not(None), inner)  # no address: nothing to select


def users_where(flt: ScimFilter[Any], *, dialect: str) -> ColumnElement[bool]:
    return ToSql(flt, USER_ATTRS, dialect=dialect).visit(flt.ast)


def groups_where(flt: ScimFilter[Any], *, dialect: str) -> ColumnElement[bool]:
    return ToSql(flt, GROUP_ATTRS, dialect=dialect).visit(flt.ast)
