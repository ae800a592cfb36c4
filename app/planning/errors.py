"""The planner's one exception type."""


class PlanningError(ValueError):
    """Input the planner cannot work with; the message says what is wrong and what to change."""
