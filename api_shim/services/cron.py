"""Cron validation (croniter): the 5-field expressions Dagster schedules accept."""

from __future__ import annotations

from croniter import croniter


def validate_cron(expression: str) -> str:
    expression = " ".join(expression.split())
    if len(expression.split(" ")) != 5:
        raise ValueError("Invalid cron expression: use 5 fields (minute hour day month weekday), e.g. '0 2 * * *'")
    if not croniter.is_valid(expression):
        raise ValueError(f"Invalid cron expression '{expression}'")
    return expression
