"""A cron timetable that, without catchup, only ever schedules the next tick.

Airflow turns a cron string such as ``"0 2 * * *"`` into a
``CronTriggerTimetable``. With ``catchup=False`` that timetable still offers the
*latest past* tick as the next run (``airflow/timetables/trigger.py``,
``_TriggerTimetable.next_dagrun_info``: ``_align_to_prev(utcnow())`` is always a
candidate). When a DAG is unpaused (or triggered with "unpause on trigger") the
scheduler therefore creates a scheduled run for a tick that passed hours ago: a
surprise run with default params which, with ``max_active_runs=1``, also holds
back the run the user asked for.

:class:`NextTickCronTimetable` keeps every other behaviour of
``CronTriggerTimetable`` but, with ``catchup=False``, never offers a tick older
than ``now - grace``. A tick missed by less than the grace window (a scheduler a
minute late) still runs; anything older is skipped in favour of the next tick.
Manual triggers are unaffected: they start at once.

This file lives in Airflow's plugins folder (``[core] plugins_folder``). Airflow
puts that folder on ``sys.path`` (``airflow.settings.prepare_syspath_for_config_and_plugins``),
so DAG files import it as a top-level module::

    from cyclegan_timetables import schedule_for

    @dag(schedule=schedule_for("0 2 * * *"), catchup=False, ...)

:class:`CycleganTimetablesPlugin` registers the timetable with Airflow's plugin
manager; DAG serialization refuses custom timetables that no plugin registers
(``airflow.serialization.helpers.find_registered_custom_timetable``), and the
scheduler and API server rebuild the timetable from the registered class.
"""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any

from airflow._shared.timezones.timezone import coerce_datetime, parse_timezone
from airflow.plugins_manager import AirflowPlugin
from airflow.timetables import trigger as _trigger
from airflow.timetables.base import DagRunInfo
from airflow.timetables.trigger import CronTriggerTimetable

if TYPE_CHECKING:
    from airflow.timetables.base import DataInterval, TimeRestriction, Timetable
    from dateutil.relativedelta import relativedelta
    from pendulum import DateTime
    from pendulum.tz.timezone import FixedTimezone, Timezone

__all__ = [
    "DEFAULT_GRACE",
    "CycleganTimetablesPlugin",
    "NextTickCronTimetable",
    "schedule_for",
]

log = logging.getLogger(__name__)

DEFAULT_GRACE = datetime.timedelta(minutes=5)
"""How late a tick may still be started when catchup is off (see :class:`NextTickCronTimetable`)."""

# Schedule strings that are not cron expressions; Airflow builds their own timetables.
_NON_CRON_PRESETS = frozenset({"@once", "@continuous"})


def _describe_grace(grace: datetime.timedelta) -> str:
    """Render a grace window for humans: ``"5 min"``, ``"90 s"``, ``"2 h"``."""
    seconds = int(grace.total_seconds())
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


class NextTickCronTimetable(CronTriggerTimetable):
    """``CronTriggerTimetable`` that, without catchup, schedules only upcoming ticks.

    With ``catchup=False`` the next scheduled run is the first cron tick at or
    after ``now - grace`` (and after the last automated run, and not before the
    DAG's ``start_date``). A DAG that is unpaused after a tick has passed thus
    gets no run for it, unless the tick is less than ``grace`` old. With
    ``catchup=True`` the behaviour is exactly ``CronTriggerTimetable``'s.

    Airflow stores the result in the DAG's ``next_dagrun_create_after`` each time
    the DAG processor parses the file (every ``[dag_processor]
    min_file_process_interval``, 30 s by default) and after each scheduled run;
    the scheduler creates runs from that stored value. So a tick is skipped once
    a parse has seen it older than ``grace``, whatever the reason it did not run
    (DAG paused, scheduler down, or ``max_active_runs`` reached by a long run).

    The UI shows the cron expression as the summary (presets such as ``@weekly``
    are expanded, as Airflow does) and a human description of it.

    :param cron: Cron expression or preset (``"@daily"``, ``"@weekly"``...).
        ``"@once"`` and ``"@continuous"`` are not cron schedules; see
        :func:`schedule_for`.
    :param timezone: Timezone in which the cron expression is evaluated.
    :param interval: Data interval of each run (the run covers
        ``[tick - interval, tick]``), as in ``CronTriggerTimetable``. Default 0.
    :param grace: How long after a tick it may still be scheduled when catchup
        is off. A non-negative ``timedelta``; default :data:`DEFAULT_GRACE`.
    :raises ValueError: If ``grace`` is negative or not a ``timedelta``.
    """

    def __init__(
        self,
        cron: str,
        *,
        timezone: str | Timezone | FixedTimezone,
        interval: datetime.timedelta | relativedelta = datetime.timedelta(),
        grace: datetime.timedelta = DEFAULT_GRACE,
    ) -> None:
        if not isinstance(grace, datetime.timedelta) or grace < datetime.timedelta():
            raise ValueError(f"grace must be a non-negative timedelta, got {grace!r}")
        super().__init__(cron, timezone=timezone, interval=interval, run_immediately=False)
        self._grace = grace
        if self.description:
            self.description = (
                f"{self.description} (without catchup, a tick missed by over "
                f"{_describe_grace(grace)} is skipped)"
            )

    @property
    def grace(self) -> datetime.timedelta:
        """How long after a tick it may still be scheduled when catchup is off."""
        return self._grace

    def __eq__(self, other: object) -> bool:
        """Equal when cron, timezone, data interval and grace match (mainly for tests).

        Compared by class name and serialized state, not ``isinstance``: Airflow's
        plugin manager executes this file again as a fresh module, so a DAG file's
        import and the registered class can be two distinct class objects.
        """
        if (
            not isinstance(other, CronTriggerTimetable)
            or type(other).__name__ != type(self).__name__
        ):
            return NotImplemented
        return self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash((self._expression, str(self._timezone), self._grace))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._expression!r}, timezone={self._timezone.name!r}, "
            f"grace={self._grace!r})"
        )

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> Timetable:
        """Rebuild the timetable from :meth:`serialize`'s output.

        A payload without ``grace`` (none is written so, but be lenient) gets
        :data:`DEFAULT_GRACE`.
        """
        from airflow.serialization.decoders import decode_interval

        grace = data.get("grace")
        return cls(
            data["expression"],
            timezone=parse_timezone(data["timezone"]),
            interval=decode_interval(data["interval"]),
            grace=DEFAULT_GRACE if grace is None else datetime.timedelta(seconds=grace),
        )

    def serialize(self) -> dict[str, Any]:
        """``CronTriggerTimetable``'s fields plus ``grace`` in seconds (JSON-compatible)."""
        return {**super().serialize(), "grace": self._grace.total_seconds()}

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        """The next scheduled run: the parent's with catchup, else no tick before ``now - grace``.

        Without catchup the run is at the latest of: the first tick at or after
        ``now - grace``; the first tick after the last automated run; the first
        tick at or after ``restriction.earliest`` (the DAG's start date). It is
        ``None`` past ``restriction.latest`` (the DAG's end date).
        """
        if restriction.catchup:
            return super().next_dagrun_info(
                last_automated_data_interval=last_automated_data_interval,
                restriction=restriction,
            )
        # The clock the parent reads, so both agree (and one patch freezes both in tests).
        now = coerce_datetime(_trigger.utcnow())
        candidates = [self._align_to_next(now - self._grace)]
        if last_automated_data_interval is not None:
            candidates.append(self._get_next(last_automated_data_interval.end))
        if restriction.earliest is not None:
            candidates.append(self._align_to_next(restriction.earliest))
        next_start: DateTime = max(candidates)
        if restriction.latest is not None and restriction.latest < next_start:
            return None
        if next_start < now:
            log.debug("Scheduling tick %s, %s late (within grace)", next_start, now - next_start)
        return DagRunInfo.interval(coerce_datetime(next_start - self._interval), next_start)


def schedule_for(
    cron: str | None,
    *,
    timezone: str | Timezone | FixedTimezone = "UTC",
    grace: datetime.timedelta = DEFAULT_GRACE,
) -> NextTickCronTimetable | str | None:
    """The ``schedule=`` value for a DAG from a configured cron string.

    :param cron: Cron expression or preset (``"0 2 * * *"``, ``"@weekly"``).
        ``None``, empty or blank means no schedule (manual triggers only);
        ``"@once"`` and ``"@continuous"`` are returned unchanged for Airflow to
        handle, as they are not cron schedules.
    :param timezone: Timezone in which the cron expression is evaluated.
    :param grace: See :class:`NextTickCronTimetable`.
    :return: ``None``, the unchanged non-cron preset, or a
        :class:`NextTickCronTimetable`.
    :raises airflow.exceptions.AirflowTimetableInvalid: If ``cron`` is not a
        valid cron expression (raised here, so the DAG file shows the error).
    """
    if cron is None or not cron.strip():
        return None
    cron = cron.strip()
    if cron in _NON_CRON_PRESETS:
        return cron
    timetable = NextTickCronTimetable(cron, timezone=timezone, grace=grace)
    timetable.validate()
    return timetable


class CycleganTimetablesPlugin(AirflowPlugin):
    """Registers :class:`NextTickCronTimetable`, so DAGs using it can be serialized."""

    name = "cyclegan_timetables"
    timetables = [NextTickCronTimetable]
