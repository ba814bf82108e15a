"""The plan stage's library: the budget (:mod:`~rsnet.plan.budget`), the exact width solver
(:mod:`~rsnet.plan.solver`), the scaling policies that turn a model graph and a budget into
widths (:mod:`~rsnet.plan.policies`: rs, uniform, given factors, a plan file) and the
resulting :class:`WidthPlan` (:mod:`~rsnet.plan.widthplan`, ``plan.json``)."""

from rsnet.plan.widthplan import MacroWidth, MicroWidth, WidthPlan, check_plan_cost

__all__ = ["WidthPlan", "MicroWidth", "MacroWidth", "check_plan_cost"]
