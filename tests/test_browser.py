"""End to end in a real browser: the local Airflow stack (scripts/airflow_local.py standalone)
driven through its React UI with headless Chromium, the way a person uses it.

One stack for the module (a fresh root under pytest's tmp dir, free ports), then ordered steps:
log in; unpausing the nightly starts no run; the retrain DAG's docs; its trigger form (invalid
values refused, then a tiny valid run); the run succeeds alone (unpause-on-trigger made no
scheduled run); the train log is INFO progress, no WARNING/ERROR; the nightly's `summarize`
links to a contact sheet PNG. Screenshots of each step go to var/browser/ (overwritten per
run) with timings.json. Needs Debian's chromium and chromium-driver (.ci/run installs them).
Every wait polls a condition with a deadline; everything started is stopped by process group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from browser_helpers import (
    SHOTS,
    Stack,
    button,
    cron_hours_ago,
    descendants,
    dialog,
    displayed,
    field_row,
    is_dropdown,
    log_view_lines,
    quote,
    scroll_to,
    select_option,
    shot,
    start_browser,
    start_stack,
    stop_browser,
    stop_tree,
    type_into,
    until,
    wait_for,
)
from helpers import process_alive

from cyclegan_local import reaper

pytestmark = pytest.mark.slow

RETRAIN, NIGHTLY = "cyclegan_retrain", "cyclegan_nightly_translate"
RUN_TIMEOUT = 900  # s: a tiny retrain is about 2 minutes on 2 idle cores, the nightly 1
TERMINAL = ("success", "failed")
PROGRESS = re.compile(r"\bepoch \d+/\d+")  # cyclegan_jobs.training.train's progress lines
BAD_LEVELS = ("ERROR", "WARNING", "CRITICAL")
# The valid trigger: tiny and fast (the sample domains are 64 images each).
FORM = {"preset": "tiny", "epochs": 1, "image_size": 32, "min_cycle_psnr": 0, "disc_augment": "off"}


@dataclass
class E2E:
    stack: Stack
    driver: Any
    timings: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - start, 1)

    def open(self, path: str) -> None:
        self.driver.get(self.stack.base + path)

    def need(self, key: str) -> Any:
        if key not in self.state:
            pytest.fail(f"an earlier step did not get as far as {key!r}; see its failure")
        return self.state[key]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[E2E]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in (*SHOTS.glob("*.png"), SHOTS / "timings.json"):
        old.unlink(missing_ok=True)
    timings: dict[str, float] = {}
    start = time.monotonic()
    driver = start_browser()  # first: without Chromium, fail before the minute of stack start
    timings["1a browser up"] = round(time.monotonic() - start, 1)
    stack = None
    try:
        start = time.monotonic()
        # A daily nightly whose latest tick was 3 hours ago: stock Airflow (catchup=False)
        # would schedule that tick the moment the DAG is unpaused.
        env = {"CYCLEGAN_NIGHTLY_SCHEDULE": cron_hours_ago(3)}
        stack = start_stack(tmp_path_factory.mktemp("browser_stack"), env)
        timings["1b stack up"] = round(time.monotonic() - start, 1)
        yield E2E(stack, driver, timings)
    finally:
        start = time.monotonic()
        try:
            stop_browser(driver)
        finally:
            if stack is not None:
                stop_tree(stack.proc)
            timings["9 teardown"] = round(time.monotonic() - start, 1)
            _report(request, timings)


def _report(request: pytest.FixtureRequest, timings: dict[str, float]) -> None:
    timings["total"] = round(sum(timings.values()), 1)
    (SHOTS / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # shown even when every step passes
        reporter.write_line("")
        reporter.write_line(f"browser e2e step times (s), screenshots in {SHOTS}:")
        for name, seconds in timings.items():
            reporter.write_line(f"  {name:<28} {seconds:7.1f}")


def test_2_login(e2e: E2E) -> None:
    from selenium.webdriver.common.by import By

    with e2e.step("2 login"):
        d = e2e.driver
        e2e.open("/")
        user = until(d, "the login form", lambda d: displayed(d, "input[name=username]"))[0]
        user.send_keys("admin")
        d.find_element(By.NAME, "password").send_keys(e2e.stack.password)
        shot(d, "02a_login_form")
        d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        until(d, "the home page", lambda d: "/auth/login" not in d.current_url)
        until(d, "the navigation", lambda d: displayed(d, "a[href$='/dags']"))
        shot(d, "02b_logged_in")
        e2e.state["logged_in"] = True


def _foreign_runs(e2e: E2E, dag_id: str, own: str | None) -> list[dict]:
    """Runs of `dag_id` other than `own`, each set to failed (so that, with max_active_runs=1,
    it does not hold back the run the test waits for) after noting what it was."""
    found = e2e.state.setdefault(f"foreign:{dag_id}", {})
    for run in e2e.stack.api.runs(dag_id):
        if run["dag_run_id"] == own:
            continue
        keys = ("dag_run_id", "run_type", "triggered_by", "logical_date", "state")
        found.setdefault(run["dag_run_id"], {k: run[k] for k in keys})
        if run["state"] not in TERMINAL:
            path = f"/dags/{dag_id}/dagRuns/{quote(run['dag_run_id'])}"
            e2e.stack.api.patch(path, {"state": "failed"})
    return list(found.values())


def _after(stamp: str | None, moment: datetime) -> bool:
    return bool(stamp) and datetime.fromisoformat(stamp) > moment


def test_3_unpause_nightly_starts_no_run(e2e: E2E) -> None:
    api = e2e.stack.api
    with e2e.step("3 unpause: no surprise run"):
        dag = api.get(f"/dags/{NIGHTLY}")
        assert dag["is_paused"] is True, "the nightly must start paused"
        next_before = dag["next_dagrun_run_after"]
        assert api.runs(NIGHTLY) == []
        unpaused_at = datetime.now(UTC)
        api.patch(f"/dags/{NIGHTLY}", {"is_paused": False})
        # The DAG processor parses the file again after the unpause (min_file_process_interval)
        parsed = wait_for(
            "the nightly parsed after the unpause",
            lambda: (
                _after(api.get(f"/dags/{NIGHTLY}")["last_parsed_time"], unpaused_at)
                and datetime.now(UTC)
            ),
            180,
        )
        # ... then the scheduler goes round its loop twice (one heartbeat per loop).
        beats: set[str] = set()

        def two_loops() -> bool:
            beat = api.health()["scheduler"]["latest_scheduler_heartbeat"]
            if _after(beat, parsed):
                beats.add(beat)
            return len(beats) >= 2

        wait_for("two scheduler heartbeats after the parse", two_loops, 120, 0.5)
        e2e.open(f"/dags/{NIGHTLY}")
        until(
            e2e.driver,
            "the nightly's page",
            lambda d: displayed(d, "[data-testid=markdown-button]"),
        )
        shot(e2e.driver, "03_nightly_unpaused")
        surprise = _foreign_runs(e2e, NIGHTLY, None)
        dag = api.get(f"/dags/{NIGHTLY}")
        e2e.state["nightly_unpaused"] = True
        assert not surprise, (
            f"unpausing {NIGHTLY} (schedule {dag['timetable_summary']!r}, now "
            f"{datetime.now(UTC):%H:%M} UTC) created {surprise}; next_dagrun_run_after was "
            f"{next_before} before the unpause, {dag['next_dagrun_run_after']} now"
        )


def test_4_retrain_docs(e2e: E2E) -> None:
    from selenium.webdriver.common.by import By

    e2e.need("logged_in")
    d = e2e.driver
    with e2e.step("4 docs"):
        e2e.open(f"/dags/{RETRAIN}")
        docs = "[data-testid=markdown-button]"  # "Dag Docs" in the DAG header
        until(d, "the Dag Docs button", lambda d: displayed(d, docs))[0].click()
        panel = dialog(d, RETRAIN)
        text = panel.get_attribute("textContent")
        shot(d, "04_retrain_docs")
        assert RETRAIN in text and "Trigger" in text, f"the docs panel shows: {text[:500]!r}"
        panel.find_element(By.CSS_SELECTOR, "button[aria-label=Close]").click()
        until(d, "the docs panel closed", lambda d: not displayed(d, "[role=dialog]"))


def _form_errors(form: Any) -> list[str]:
    return [e.text for e in form.find_elements("css selector", "[data-part=error-text]") if e.text]


def _unpause_box(form: Any) -> Any:
    """The "Unpause <dag> on trigger" checkbox (Chakra: a label with a hidden input)."""
    return form.find_element("xpath", ".//label[@data-scope='checkbox'][contains(., 'Unpause')]")


def _open_trigger_form(e2e: E2E) -> Any:
    d = e2e.driver
    e2e.open(f"/dags/{RETRAIN}")
    trigger = "[data-testid=trigger-dag-button]"
    until(d, "the Trigger button", lambda d: displayed(d, trigger))[0].click()
    until(d, "the trigger form", lambda d: displayed(d, "input[name=element_epochs]"))
    form = dialog(d, "Run Parameters")
    box = _unpause_box(form)
    assert box.get_attribute("data-state") == "checked", "Unpause on trigger is ticked by default"
    return form


def _check_client_refusals(e2e: E2E, form: Any) -> None:
    """What the form does with invalid values before anything reaches the server."""
    d = e2e.driver
    # Below the minimum: the number field clamps to it when it loses focus (no message).
    epochs = form.find_element("name", "element_epochs")
    minimum = epochs.get_attribute("aria-valuemin")
    type_into(d, epochs, "-1")
    type_into(d, form.find_element("name", "element_batch_size"), "1")  # moves the focus
    until(d, "epochs clamped", lambda d: epochs.get_attribute("value") != "-1", 10)
    assert epochs.get_attribute("value") == minimum, "-1 epochs: clamped to the minimum"
    # Letters in a number field: not taken at all.
    rate = form.find_element("name", "element_learning_rate")
    type_into(d, rate, "abc")
    assert rate.get_attribute("value") == "", "letters in the learning rate are refused"
    # A required field emptied: a message under it and the Trigger button disabled.
    domain_a = form.find_element("name", "element_domain_a")
    original = domain_a.get_attribute("value")
    type_into(d, domain_a, "")
    row = field_row(d, "domain_a")
    until(d, "the required-field message", lambda d: _form_errors(row), 10)
    assert not button(form, "Trigger").is_enabled(), "Trigger is disabled while a field is wrong"
    shot(d, "05a_form_refuses_empty_required")
    type_into(d, domain_a, original)
    until(d, "the message gone", lambda d: not _form_errors(form), 10)
    assert button(form, "Trigger").is_enabled()


def _check_server_refusal(e2e: E2E, form: Any) -> None:
    """learning_rate has exclusiveMinimum 0, which the form does not check: the API refuses the
    run and the UI says so. Unpause-on-trigger is unticked for this try, because the UI sends the
    unpause beside the run, whatever the API says of the run (a refused trigger would still
    unpause the DAG)."""
    from selenium.webdriver.common.action_chains import ActionChains

    d = e2e.driver
    box = _unpause_box(form)
    scroll_to(d, box).click()
    until(d, "Unpause unticked", lambda d: box.get_attribute("data-state") == "unchecked", 10)
    rate = form.find_element("name", "element_learning_rate")
    type_into(d, rate, "0")
    type_into(d, form.find_element("name", "element_batch_size"), "1")
    scroll_to(d, button(form, "Trigger")).click()
    toast = "[data-scope=toast][data-part=root]"

    def refused(d: Any) -> Any:
        said = [t.text for t in displayed(d, toast)]
        return [t for t in said if "Failed" in t] or _form_errors(form)

    message = until(d, "the trigger refused", refused, 30)
    shot(d, "05b_form_refused_by_server")
    assert e2e.stack.api.runs(RETRAIN) == [], f"a refused trigger ({message}) made a run"
    assert e2e.stack.api.get(f"/dags/{RETRAIN}")["is_paused"] is True
    # The toast pauses while the pointer is over it (its hover zone reaches the Trigger
    # button): move away, as a person would, and it goes after its 5 s.
    ActionChains(d).move_to_element(form.find_element("css selector", "h2")).perform()
    until(d, "the toast gone", lambda d: not displayed(d, toast), 30)
    type_into(d, rate, "")
    scroll_to(d, box).click()
    until(d, "Unpause ticked again", lambda d: box.get_attribute("data-state") == "checked", 10)


def _first_number(label: str) -> int | None:
    match = re.search(r"\d+", label)
    return int(match.group()) if match else None


def _fill_valid(e2e: E2E, form: Any) -> None:
    d = e2e.driver
    select_option(d, "preset", lambda label: re.match(rf"{FORM['preset']}\b", label))
    select_option(d, "disc_augment", lambda label: label == FORM["disc_augment"])
    if is_dropdown(form, "image_size"):  # values_display may label the sizes: "32 x 32 px"
        select_option(d, "image_size", lambda label: _first_number(label) == FORM["image_size"])
    else:  # a number field
        type_into(d, form.find_element("name", "element_image_size"), str(FORM["image_size"]))
    for name in ("epochs", "min_cycle_psnr"):
        type_into(d, form.find_element("name", f"element_{name}"), str(FORM[name]))
    type_into(d, form.find_element("name", "element_batch_size"), "1")  # blur the last one
    for name in ("epochs", "min_cycle_psnr"):
        value = form.find_element("name", f"element_{name}").get_attribute("value")
        assert float(value) == FORM[name], f"{name} shows {value!r}"
    assert not _form_errors(form), _form_errors(form)
    assert _unpause_box(form).get_attribute("data-state") == "checked"
    shot(d, "05c_form_valid")


def test_5_trigger_form(e2e: E2E) -> None:
    e2e.need("logged_in")
    d, api = e2e.driver, e2e.stack.api
    with e2e.step("5 trigger form"):
        form = _open_trigger_form(e2e)
        _check_client_refusals(e2e, form)
        _check_server_refusal(e2e, form)
        _fill_valid(e2e, form)
        scroll_to(d, button(form, "Trigger")).click()
        until(d, "the form closed", lambda d: not displayed(d, "input[name=element_epochs]"))
        manual = wait_for(
            "the triggered run",
            lambda: [r for r in api.runs(RETRAIN) if r["run_type"] == "manual"],
            60,
        )
        assert len(manual) == 1, manual
        run = manual[0]
        e2e.state["retrain_run"] = run["dag_run_id"]
        conf = {k: run["conf"].get(k) for k in FORM}
        assert conf == FORM, f"the form sent {run['conf']}"
        # The UI sends the unpause (PATCH) and the run (POST) together without awaiting the
        # first, so the run can be listed before the unpause lands (CI, stop 33): poll for it.
        wait_for("unpaused on trigger", lambda: not api.get(f"/dags/{RETRAIN}")["is_paused"], 30)


def _wait_run(e2e: E2E, dag_id: str, run_id: str) -> dict:
    """Poll the run until it ends; runs of the DAG that are not this one are noted and failed."""

    def ended() -> dict | None:
        _foreign_runs(e2e, dag_id, run_id)
        run = e2e.stack.api.run(dag_id, run_id)
        return run if run["state"] in TERMINAL else None

    return wait_for(f"{dag_id} run {run_id} to end", ended, RUN_TIMEOUT, 3)


def _grid_shot(e2e: E2E, dag_id: str, run_id: str, name: str) -> None:
    d = e2e.driver
    e2e.open(f"/dags/{dag_id}")  # the grid view: one column per run
    run_link = f"a[href*='/runs/{quote(run_id)}'], a[href*='/runs/{run_id}']"
    until(d, "the run in the grid", lambda d: displayed(d, run_link), 60)
    shot(d, name)


def test_6_retrain_run(e2e: E2E) -> None:
    api = e2e.stack.api
    run_id = e2e.need("retrain_run")
    with e2e.step("6 retrain run"):
        run = _wait_run(e2e, RETRAIN, run_id)
        states = api.task_states(RETRAIN, run_id)
        _grid_shot(e2e, RETRAIN, run_id, "06_retrain_grid")
        problems = []
        surprise = _foreign_runs(e2e, RETRAIN, run_id)
        if surprise:
            problems.append(f"runs besides the manual one (unpause on trigger): {surprise}")
        if run["state"] != "success":
            problems.append(f"the run ended {run['state']}: {states}")
        elif states.get("promote") != "success":
            summary = " ".join(line["event"] for line in api.log(RETRAIN, run_id, "summary"))
            if "refused" not in summary:
                problems.append(f"promote {states.get('promote')}, and no refusal in the log")
        assert not problems, "; ".join(problems)
        # The form's choice reached the command the train task ran.
        xcom = f"/dags/{RETRAIN}/dagRuns/{quote(run_id)}/taskInstances/train_command/xcomEntries"
        command = str(api.get(f"{xcom}/return_value")["value"])
        assert re.search(rf"--disc-augment\W+{FORM['disc_augment']}\b", command), command
        e2e.state["promoted"] = states.get("promote") == "success"
        _summary_shot(e2e, run_id)


def _summary_shot(e2e: E2E, run_id: str) -> None:
    """The summary task's log: the outcome in one INFO block, where an operator looks."""
    d = e2e.driver
    e2e.open(f"/dags/{RETRAIN}/runs/{quote(run_id)}/tasks/summary")
    lines: list[tuple[str, str]] = []

    def outcome_shown(d: Any) -> bool:
        lines[:] = log_view_lines(d)
        return any("retrain run" in text for _, text in lines)

    until(d, "the outcome block in the summary log", outcome_shown, 90)
    shot(d, "06b_retrain_summary_log")
    block = [(level, text) for level, text in lines if "retrain run" in text]
    assert block[0][0] == "INFO", block


def test_7_train_log_levels(e2e: E2E) -> None:
    api, d = e2e.stack.api, e2e.driver
    run_id = e2e.need("retrain_run")
    with e2e.step("7 train log"):
        ti = api.get(f"/dags/{RETRAIN}/dagRuns/{quote(run_id)}/taskInstances/train")
        e2e.open(f"/dags/{RETRAIN}/runs/{quote(run_id)}/tasks/train?try_number={ti['try_number']}")
        lines: list[tuple[str, str]] = []

        def progress_shown(d: Any) -> bool:
            lines[:] = log_view_lines(d)
            return any(PROGRESS.search(text) for _, text in lines)

        until(d, "progress lines in the train log view", progress_shown, 90)
        shot(d, "07_train_log")
        progress = [(level, text) for level, text in lines if PROGRESS.search(text)]
        bad = [(level, text[:200]) for level, text in lines if level in BAD_LEVELS]
        # The API's whole log, including the groups the view folds (Pre/Post Execute).
        whole = api.log(RETRAIN, run_id, "train", ti["try_number"])
        bad_api = [(x.get("level"), x.get("logger"), str(x.get("event"))[:200]) for x in whole
                   if str(x.get("level", "")).upper() in BAD_LEVELS]  # fmt: skip
        assert all(level == "INFO" for level, _ in progress), f"progress lines: {progress}"
        assert not bad, f"the log view shows WARNING/ERROR lines: {bad}"
        assert not bad_api, f"the task log has WARNING/ERROR lines: {bad_api}"


def _contact_sheet_link(e2e: E2E, run_id: str) -> Any:
    """The "Contact sheet" button (an extra link) of the summarize task instance: Airflow 3.3
    shows extra links under "Extra Links" on the task instance's Details tab."""
    d = e2e.driver
    e2e.open(f"/dags/{NIGHTLY}/runs/{quote(run_id)}/tasks/summarize")
    tab = "a[href$='/tasks/summarize/details']"
    until(d, "the task instance's Details tab", lambda d: displayed(d, tab))[0].click()

    def link(d: Any) -> Any:
        return [a for a in displayed(d, "a[href]") if a.text.strip() == "Contact sheet"]

    try:
        return until(d, "the Contact sheet link", link, 60)[0]
    except Exception:
        shot(d, "08a_summarize_no_link")
        path = f"/dags/{NIGHTLY}/dagRuns/{quote(run_id)}/taskInstances/summarize/links"
        links = e2e.stack.api.get(path)
        pytest.fail(f"no 'Contact sheet' link on summarize; the API's links: {links}")


def _shows_png(d: Any) -> bool:
    return d.execute_script(
        "const i = document.images[0];"
        "return document.contentType === 'image/png' && !!i && i.complete && i.naturalWidth > 0;"
    )


def test_8_nightly_contact_sheet(e2e: E2E) -> None:
    api, d = e2e.stack.api, e2e.driver
    e2e.need("retrain_run")
    with e2e.step("8 nightly + contact sheet"):
        api.patch(f"/dags/{NIGHTLY}", {"is_paused": False})  # step 3 did, unless it broke
        run_id = api.post(f"/dags/{NIGHTLY}/dagRuns", {"logical_date": None, "conf": {}})[
            "dag_run_id"
        ]
        run = _wait_run(e2e, NIGHTLY, run_id)
        assert run["state"] == "success", api.task_states(NIGHTLY, run_id)
        summary_log = " ".join(str(x.get("event")) for x in api.log(NIGHTLY, run_id, "summarize"))
        link = _contact_sheet_link(e2e, run_id)
        shot(d, "08a_summarize")
        href, windows = link.get_attribute("href"), set(d.window_handles)
        scroll_to(d, link).click()
        until(
            d, "the link opened", lambda d: set(d.window_handles) > windows or d.current_url == href
        )
        new = set(d.window_handles) - windows
        if new:
            d.switch_to.window(new.pop())
        until(d, "a PNG in the browser", _shows_png, 60)
        shot(d, "08b_contact_sheet")
        assert "contact_sheet.png" in d.current_url, d.current_url
        assert re.search(r"contact sheet: http", summary_log, re.I), "the log names the URL"
        # Every task of the nightly, each shard too, logged no WARNING or ERROR (urllib3's
        # "Connection pool is full" was one, when the pool was smaller than the threads).
        bad = [
            (ti["task_id"], ti["map_index"], str(line.get("event"))[:200])
            for ti in api.task_instances(NIGHTLY, run_id)
            for line in api.log(NIGHTLY, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
            if str(line.get("level", "")).upper() in BAD_LEVELS
        ]
        assert not bad, f"the nightly's task logs have WARNING/ERROR lines: {bad}"


def test_9_sigkill_of_the_launcher_leaves_nothing(e2e: E2E) -> None:
    """`make airflow` killed with SIGKILL (an impatient second Ctrl-C, kill -9): airflow
    standalone's ~20 processes and the S3 server stop with it, and the UI's port is free."""
    launcher = e2e.stack.proc
    started = descendants(launcher.pid)
    assert len(started) >= 5, "airflow standalone's components and SeaweedFS were running"
    with e2e.step("9 SIGKILL, all gone"):
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone, as a terminal would
        launcher.wait()
        deadline = time.monotonic() + reaper.GRACE_S + 30
        while (left := sorted(p for p in started if process_alive(p))) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
    assert not left, f"still running after the launcher's SIGKILL: {_cmdlines(left)}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", e2e.stack.port), timeout=5).close()


def _cmdlines(pids: list[int]) -> dict[int, str]:
    out = {}
    for pid in pids:
        try:
            out[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            out[pid] = "(gone)"
    return out
