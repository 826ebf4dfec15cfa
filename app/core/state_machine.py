"""The one mechanism behind the states of jobs and of chat completions.

A table's legal transitions are data; every change is a compare-and-set on the row's
current state (`UPDATE ... WHERE id = :id AND state IN (...)`), so two processes racing
(a cancel and a finish, two workers claiming one job) cannot both win, and the loser is
told instead of silently overwriting::

    JOB_STATES = StateMachine(Job, {queued: {running, ...}, running: {...}, ...})
    JOB_STATES.move(session, job.id, from_states=[job.state], to=running, worker=...)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.tables import utcnow

StateT = TypeVar("StateT", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    def __init__(self, what: str, row_id: int, current: enum.Enum, wanted: enum.Enum) -> None:
        super().__init__(f"{what} {row_id} cannot go from {current.value} to {wanted.value}")
        self.current = current
        self.wanted = wanted


@dataclass(frozen=True)
class StateMachine(Generic[StateT]):
    table: Any  # an ORM class with id, state, updated_at and finished_at columns; states have `is_terminal`
    transitions: Mapping[StateT, frozenset[StateT]]
    what: str  # how messages name a row: "job", "completion"

    def allowed(self, current: StateT, to: StateT) -> bool:
        return to in self.transitions[current]

    def update_if(self, session: Session, row_id: int, states: Iterable[StateT], **values: Any) -> bool:
        """Write `values` (and `updated_at`) if the row is in one of `states`; True when it was.
        A `state` among the values that is terminal (`is_terminal`) sets `finished_at`, and any
        other clears it (a finished job that is resumed has not finished any more)."""
        now = utcnow()
        values = {"updated_at": now, **values}
        to = values.get("state")
        if to is not None:
            values["finished_at"] = now if to.is_terminal else None
        table = self.table
        statement = update(table).where(table.id == row_id, table.state.in_(list(states))).values(**values)
        return session.execute(statement).rowcount == 1

    def move(self, session: Session, row_id: int, *, from_states: Iterable[StateT], to: StateT, **values: Any) -> bool:
        """Move the row to `to` if it is in one of `from_states` (those that may go there).
        Raises IllegalTransition when none of them may; False when the row was elsewhere."""
        from_states = list(from_states)
        legal = [state for state in from_states if self.allowed(state, to)]
        if not legal:
            raise IllegalTransition(self.what, row_id, from_states[0], to)
        return self.update_if(session, row_id, legal, state=to, **values)
