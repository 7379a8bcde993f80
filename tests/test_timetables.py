"""plugins/cyclegan_timetables.py: a cron schedule that does not run a missed tick on unpause.

Airflow runs in this process, on a throwaway AIRFLOW_HOME; the clock is frozen by patching the
`utcnow` that airflow/timetables/trigger.py imports (the timetable reads that same name). The
plugin is loaded the way the DAG processor loads it: the DAG file imports the module through
sys.path, and Airflow's plugin manager executes the plugins folder again to register it.
"""

from __future__ import annotations

import datetime
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pendulum
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
UTC = pendulum.UTC
START = pendulum.datetime(2026, 1, 1, tz=UTC)  # the DAGs' start_date (dags/cyclegan_common.py)
NOW = pendulum.datetime(2026, 6, 10, 14, 30, tz=UTC)  # a Wednesday afternoon
DAILY = "0 2 * * *"
PAST_TICK = pendulum.datetime(2026, 6, 10, 2, tz=UTC)  # 12.5 hours before NOW
NEXT_TICK = pendulum.datetime(2026, 6, 11, 2, tz=UTC)


def _reset_plugins() -> None:
    from airflow import plugins_manager

    plugins_manager._get_plugins.cache_clear()
    plugins_manager.get_timetables_plugins.cache_clear()


@pytest.fixture(scope="module")
def af(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Airflow with the repo's plugins folder, and the module as a DAG file imports it.

    Yields `tt` (the module imported through sys.path, as a DAG file does) and `registered`
    (the class Airflow's plugin manager registered for it, from its own load of the file).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
        mp.setenv("AIRFLOW__CORE__PLUGINS_FOLDER", str(PLUGINS))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        import airflow.settings
        from airflow import plugins_manager

        # In case Airflow was imported earlier in this process with other settings.
        mp.setattr(airflow.settings, "PLUGINS_FOLDER", str(PLUGINS))
        mp.syspath_prepend(str(PLUGINS))
        mp.delitem(sys.modules, "cyclegan_timetables", raising=False)
        _reset_plugins()
        tt = importlib.import_module("cyclegan_timetables")
        registered = plugins_manager.get_timetables_plugins()
        try:
            yield SimpleNamespace(tt=tt, registered=registered)
        finally:
            _reset_plugins()


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch):
    """`at(when)` freezes the clock the cron trigger timetables read."""

    def freeze(when: pendulum.DateTime) -> None:
        monkeypatch.setattr("airflow.timetables.trigger.utcnow", lambda: when)

    return freeze


def _next(timetable, *, last=None, earliest=START, latest=None, catchup=False):
    from airflow.timetables.base import DataInterval, TimeRestriction

    interval = None if last is None else DataInterval(last, last)
    return timetable.next_dagrun_info(
        last_automated_data_interval=interval,
        restriction=TimeRestriction(earliest=earliest, latest=latest, catchup=catchup),
    )


def _stock(cron: str):
    """What Airflow makes of `schedule="<cron>"` (airflow/serialization/encoders.py)."""
    from airflow.timetables.trigger import CronTriggerTimetable

    return CronTriggerTimetable(cron, timezone="UTC")


OLD_RUN = pendulum.datetime(2026, 5, 1, 2, tz=UTC)  # the last scheduled run, before a pause


# --- (a) the Airflow behaviour worked around, and the fix --------------------------------------


@pytest.mark.parametrize("last", [None, OLD_RUN], ids=["never-run", "paused-since-May"])
def test_stock_cron_trigger_offers_the_past_tick_without_catchup(af, at, last) -> None:
    # What unpausing a DAG with a start_date does today: a run for 02:00, 12.5 hours late.
    at(NOW)
    assert _next(_stock(DAILY), last=last).run_after == PAST_TICK


def test_stock_cron_trigger_waits_only_without_start_date_or_runs(af, at) -> None:
    # run_immediately=False only applies with no start_date and no run (trigger.py, the
    # `elif restriction.earliest is None` branch); our DAGs have a start_date.
    at(NOW)
    assert _next(_stock(DAILY), earliest=None).run_after == NEXT_TICK


@pytest.mark.parametrize("earliest", [START, None], ids=["start-date", "no-start-date"])
@pytest.mark.parametrize("last", [None, OLD_RUN], ids=["never-run", "paused-since-May"])
def test_next_tick_timetable_skips_the_missed_tick(af, at, last, earliest) -> None:
    at(NOW)
    info = _next(af.tt.schedule_for(DAILY), last=last, earliest=earliest)
    assert info.run_after == NEXT_TICK
    assert info.data_interval == (NEXT_TICK, NEXT_TICK)
    assert info.logical_date == NEXT_TICK


def test_after_a_scheduled_run_the_next_is_the_following_tick(af, at) -> None:
    at(PAST_TICK.add(seconds=5))  # the scheduler has just created the 02:00 run
    assert _next(af.tt.schedule_for(DAILY), last=PAST_TICK).run_after == NEXT_TICK


# --- (b) the grace window ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("late", "expected"),
    [
        (datetime.timedelta(0), PAST_TICK),
        (datetime.timedelta(minutes=3), PAST_TICK),  # a scheduler 3 minutes late still runs it
        (datetime.timedelta(minutes=5), PAST_TICK),  # the edge is inclusive
        (datetime.timedelta(minutes=5, seconds=1), NEXT_TICK),
    ],
)
def test_a_tick_within_the_grace_window_still_runs(af, at, late, expected) -> None:
    at(PAST_TICK + late)
    assert _next(af.tt.schedule_for(DAILY)).run_after == expected
    assert _next(af.tt.schedule_for(DAILY), last=OLD_RUN).run_after == expected


def test_grace_is_configurable(af, at) -> None:
    at(PAST_TICK.add(minutes=20))
    assert _next(af.tt.schedule_for(DAILY)).run_after == NEXT_TICK
    half_hour = af.tt.schedule_for(DAILY, grace=datetime.timedelta(minutes=30))
    assert _next(half_hour).run_after == PAST_TICK
    with pytest.raises(ValueError, match="grace"):
        af.tt.NextTickCronTimetable(DAILY, timezone="UTC", grace=datetime.timedelta(seconds=-1))


def test_start_date_end_date_and_data_interval_are_honoured(af, at) -> None:
    at(NOW)
    later_start = pendulum.datetime(2026, 7, 1, 0, 30, tz=UTC)
    assert _next(af.tt.schedule_for(DAILY), earliest=later_start).run_after == later_start.add(
        minutes=90
    )
    assert _next(af.tt.schedule_for(DAILY), latest=NOW) is None  # past the end_date
    day = datetime.timedelta(days=1)
    info = _next(af.tt.NextTickCronTimetable(DAILY, timezone="UTC", interval=day))
    assert info.data_interval == (NEXT_TICK - day, NEXT_TICK)
    assert info.run_after == NEXT_TICK


# --- (c) with catchup: exactly the parent --------------------------------------------------------


@pytest.mark.parametrize("earliest", [START, None], ids=["start-date", "no-start-date"])
@pytest.mark.parametrize("last", [None, OLD_RUN, PAST_TICK], ids=["never", "may", "today"])
@pytest.mark.parametrize("cron", [DAILY, "@weekly", "*/15 * * * *"])
def test_catchup_behaves_exactly_like_cron_trigger(af, at, cron, last, earliest) -> None:
    at(NOW)
    ours = _next(af.tt.schedule_for(cron), last=last, earliest=earliest, catchup=True)
    assert ours == _next(_stock(cron), last=last, earliest=earliest, catchup=True)
    assert ours is not None


# --- (d) serialization and the plugin ----------------------------------------------------------


def test_serialize_round_trip_keeps_every_field(af) -> None:
    timetable = af.tt.NextTickCronTimetable(
        "30 21 * * 5",
        timezone="Europe/Berlin",
        interval=datetime.timedelta(hours=1),
        grace=datetime.timedelta(seconds=90),
    )
    data = json.loads(json.dumps(timetable.serialize()))  # as stored: plain JSON
    again = af.tt.NextTickCronTimetable.deserialize(data)
    assert again == timetable
    assert again.grace == datetime.timedelta(seconds=90)
    assert again.serialize() == timetable.serialize()
    assert again != af.tt.schedule_for("30 21 * * 5", timezone="Europe/Berlin")  # grace differs


def test_the_plugin_registers_the_timetable(af) -> None:
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable

    registered = af.registered["cyclegan_timetables.NextTickCronTimetable"]
    timetable = af.tt.schedule_for(DAILY, grace=datetime.timedelta(minutes=2))
    encoded = encode_timetable(timetable)
    assert encoded["__type"] == "cyclegan_timetables.NextTickCronTimetable"
    decoded = decode_timetable(json.loads(json.dumps(encoded)))
    assert type(decoded) is registered and decoded == timetable


def _dag(tt: ModuleType):
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG(
        "next_tick_probe",
        schedule=tt.schedule_for(DAILY, grace=datetime.timedelta(minutes=7)),
        start_date=START,
        catchup=False,
        max_active_runs=1,
    ) as dag:
        EmptyOperator(task_id="noop")
    return dag


def test_a_dag_using_it_serializes_and_schedules_the_next_tick(af, at) -> None:
    # The DAG processor's and the scheduler's path: DAG -> JSON -> SerializedDAG.
    from airflow.serialization.serialized_objects import DagSerialization

    stored = json.loads(json.dumps(DagSerialization.to_dict(_dag(af.tt))))
    assert stored["dag"]["timetable"]["__type"] == "cyclegan_timetables.NextTickCronTimetable"
    serdag = DagSerialization.from_dict(stored)
    timetable = serdag.timetable
    assert type(timetable) is af.registered["cyclegan_timetables.NextTickCronTimetable"]
    assert timetable.grace == datetime.timedelta(minutes=7)
    assert timetable.summary == DAILY
    assert timetable.description.startswith("At 02:00")
    at(NOW)
    assert serdag.next_dagrun_info(last_automated_run_info=None).run_after == NEXT_TICK


def test_without_the_plugin_airflow_refuses_the_dag(af, tmp_path, monkeypatch) -> None:
    import airflow.settings
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setattr(airflow.settings, "PLUGINS_FOLDER", str(tmp_path))  # no plugins there
    _reset_plugins()
    try:
        with pytest.raises(Exception, match="is not registered"):
            DagSerialization.to_dict(_dag(af.tt))
    finally:
        monkeypatch.undo()
        _reset_plugins()


# --- (e) presets and the helper ------------------------------------------------------------------


def test_weekly_preset(af, at) -> None:
    at(NOW)  # Wednesday; @weekly ticks on Sundays at 00:00
    last_sunday = pendulum.datetime(2026, 6, 7, tz=UTC)
    next_sunday = pendulum.datetime(2026, 6, 14, tz=UTC)
    assert _next(_stock("@weekly")).run_after == last_sunday
    weekly = af.tt.schedule_for("@weekly")
    assert _next(weekly).run_after == next_sunday
    assert weekly.summary == "0 0 * * 0"
    assert weekly.description.startswith("At 00:00, only on Sunday")
    assert "5 min" in weekly.description


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("@hourly", pendulum.datetime(2026, 6, 10, 15, tz=UTC)),
        ("@daily", pendulum.datetime(2026, 6, 11, tz=UTC)),
        ("@monthly", pendulum.datetime(2026, 7, 1, tz=UTC)),
    ],
)
def test_other_presets(af, at, preset, expected) -> None:
    at(NOW)
    assert _next(af.tt.schedule_for(preset)).run_after == expected


def test_schedule_for(af) -> None:
    from airflow.exceptions import AirflowTimetableInvalid

    for nothing in (None, "", "   "):
        assert af.tt.schedule_for(nothing) is None
    assert af.tt.schedule_for("@once") == "@once"  # not a cron schedule: Airflow's own
    timetable = af.tt.schedule_for(" 0 2 * * * ", timezone="Europe/Berlin")
    assert isinstance(timetable, af.tt.NextTickCronTimetable)
    assert timetable.summary == DAILY
    assert timetable.serialize()["timezone"] == "Europe/Berlin"
    assert timetable.grace == af.tt.DEFAULT_GRACE == datetime.timedelta(minutes=5)
    with pytest.raises(AirflowTimetableInvalid):
        af.tt.schedule_for("0 2 * *")
