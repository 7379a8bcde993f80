"""Helpers for tests/test_browser.py: the local Airflow stack, its REST API, headless Chromium.

The stack is `scripts/airflow_local.py standalone` (SeaweedFS + `airflow standalone`), started
in its own session and stopped by process group: SIGTERM, then SIGKILL after a grace period.
Its `airflow standalone` runs in a session of its own (the script starts it so), so the
teardown also remembers every descendant's process group before stopping anything, and stops
whatever of those is still alive afterwards (an api-server can outlive `airflow standalone`).
Every wait is a poll of a condition with a deadline; nothing sleeps a fixed time to be safe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import free_port

from cyclegan_local import reaper

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "var" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STOP_GRACE_S = 60
T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T], timeout: float, interval: float = 1.0
) -> T:  # fmt: skip
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # a poll may fail before it succeeds
            last_error = err
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def cron_hours_ago(hours: float, now: datetime | None = None) -> str:
    """A daily cron (UTC) whose latest tick was `hours` ago."""
    tick = (now or datetime.now(UTC)) - timedelta(hours=hours)
    return f"{tick.minute} {tick.hour} * * *"


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class Api:
    """The Airflow REST API (/api/v2) with a JWT from /auth/token."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.username, self.password = username, password
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            body = {"username": self.username, "password": self.password}
            self._token = self._call("POST", "/auth/token", body, auth=False)["access_token"]
        return self._token

    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{method} {path}: {err.code} {err.read()[:2000]!r}") from err

    def get(self, path: str, **query: Any) -> Any:
        suffix = "?" + urllib.parse.urlencode(query, doseq=True) if query else ""
        return self._call("GET", "/api/v2" + path + suffix)

    def patch(self, path: str, body: dict) -> Any:
        return self._call("PATCH", "/api/v2" + path, body)

    def post(self, path: str, body: dict) -> Any:
        return self._call("POST", "/api/v2" + path, body)

    # Shortcuts for what the tests ask most.
    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run, mapped ones each on their own."""
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances"
        return self.get(path, limit=100)["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in tis["task_instances"] if ti["map_index"] < 1}

    def log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> list[dict]:
        """A task instance's structured log lines (the JSON form of the logs endpoint)."""
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/logs/{try_number}"
        content = self.get(path, full_content="true", map_index=map_index)["content"]
        return [line if isinstance(line, dict) else {"event": str(line)} for line in content]

    def health(self) -> dict:
        return self._call("GET", "/api/v2/monitor/health", auth=False)


# --- processes -------------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process (Linux /proc)."""
    return {pid: (proc.parent, proc.group) for pid, proc in reaper.process_table().items()}


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (children, their children, ...)."""
    return reaper.descendants({pid}, reaper.process_table()) - {pid}


def descendant_groups(pid: int) -> dict[int, set[int]]:
    """The process groups of `pid`'s descendants (not its own group): pgid -> member pids."""
    table = _process_table()
    groups: dict[int, set[int]] = {}
    for member in descendants(pid):
        if member in table:
            groups.setdefault(table[member][1], set()).add(member)
    groups.pop(table.get(pid, (0, pid))[1], None)
    return groups


def _group_alive(pgid: int, members: set[int] | None) -> bool:
    """Whether the group still has a process (one of `members`, when given: a group id that
    was reused by unrelated processes does not count)."""
    if members is not None:
        table = _process_table()
        return any(table.get(pid, (0, -1))[1] == pgid for pid in members)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(
    pgid: int, grace: float, proc: subprocess.Popen | None = None, members: set[int] | None = None
) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds (reaping `proc` if given)."""

    def done() -> bool:
        if proc is not None and proc.poll() is None:
            return False
        return not _group_alive(pgid, members)

    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        if done():
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not done():
            time.sleep(0.2)


def stop_tree(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """Stop `proc` (started with start_new_session=True) by its group, then any group one of
    its descendants had that is still alive (e.g. a child that started its own session)."""
    groups = descendant_groups(proc.pid)
    stop_group(proc.pid, grace, proc)
    for pgid, members in sorted(groups.items()):
        stop_group(pgid, grace, members=members)


# --- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    proc: subprocess.Popen
    root: Path
    port: int
    log_path: Path
    password: str = ""
    api: Api = field(init=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        airflow_log = self.root / "airflow" / "standalone.log"
        if airflow_log.exists():
            text += "\n--- standalone.log ---\n" + airflow_log.read_text(errors="replace")
        return text[-chars:]


def start_stack(root: Path, extra_env: dict[str, str], timeout: float = 420) -> Stack:
    """`airflow_local.py standalone` on a free port, until its UI answers and both DAGs exist."""
    port = free_port()
    log_path = root / "stack.log"
    env = {**os.environ, **extra_env}
    cmd = [sys.executable, str(REPO / "scripts" / "airflow_local.py"), "standalone"]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--root", str(root), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack = Stack(proc=proc, root=root, port=port, log_path=log_path)
    try:
        _wait_until_up(stack, timeout)
    except BaseException:
        stop_tree(proc)
        raise
    return stack


def _wait_until_up(stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout

    def ui_line() -> re.Match | None:
        if stack.proc.poll() is not None:
            pytest.fail(f"the stack exited with {stack.proc.returncode}:\n{stack.log_tail()}")
        return re.search(r"Airflow UI: (\S+)\s+login: admin / (\S+)", stack.log_path.read_text())

    match = wait_for("the stack's 'Airflow UI:' line", ui_line, timeout)
    stack.password = match.group(2).rstrip(",")
    stack.api = Api(stack.base, "admin", stack.password)

    def dags_parsed() -> bool:
        found = {d["dag_id"] for d in stack.api.get("/dags", dag_id_pattern="cyclegan")["dags"]}
        errors = stack.api.get("/importErrors")["import_errors"]
        if errors:
            pytest.fail("DAG import errors:\n" + "\n".join(e["stack_trace"] for e in errors))
        return {"cyclegan_retrain", "cyclegan_nightly_translate"} <= found

    wait_for("both DAGs parsed", dags_parsed, max(10.0, deadline - time.monotonic()), 2)


# --- the browser -----------------------------------------------------------------------------


def start_browser() -> Any:
    """Headless Chromium through /usr/bin/chromedriver (its own session: stopped by group)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: the browser test needs Debian's chromium and "
            "chromium-driver (apt-get install chromium chromium-driver; .ci/run does this)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(120)
    return driver


def stop_browser(driver: Any) -> None:
    proc = driver.service.process
    groups = descendant_groups(proc.pid) if proc is not None else set()
    try:
        driver.quit()
    finally:
        if proc is not None:
            stop_group(proc.pid, 10, proc)
        for pgid, members in sorted(groups.items()):
            stop_group(pgid, 10, members=members)


# --- the UI ----------------------------------------------------------------------------------


def shot(driver: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def until(driver: Any, what: str, check: Callable[[Any], T], timeout: float = 60) -> T:
    """WebDriverWait with a message that says what was awaited."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(check, f"waiting for {what}")


def displayed(driver: Any, css: str) -> list[Any]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    found = []
    for element in driver.find_elements(By.CSS_SELECTOR, css):
        try:
            if element.is_displayed():
                found.append(element)
        except StaleElementReferenceException:
            pass
    return found


def dialog(driver: Any, containing: str, timeout: float = 60) -> Any:
    """The open (visible) dialog whose text contains `containing`."""

    def find(d: Any) -> Any:
        for element in displayed(d, "[role=dialog]"):
            if containing in (element.get_attribute("textContent") or ""):
                return element
        return None

    return until(driver, f"a dialog with {containing!r}", find, timeout)


def button(scope: Any, text: str) -> Any:
    from selenium.webdriver.common.by import By

    return scope.find_element(By.XPATH, f".//button[normalize-space(.)={json.dumps(text)}]")


def scroll_to(driver: Any, element: Any) -> Any:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    return element


def type_into(driver: Any, element: Any, text: str) -> None:
    """Replace an input's text the way a person does: select all, type (empty: delete)."""
    from selenium.webdriver.common.keys import Keys

    scroll_to(driver, element).click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text if text else Keys.BACKSPACE)


def field_row(driver: Any, name: str) -> Any:
    """The form row (Chakra Field.Root) of the Param `name`: label, widget, help, error."""
    from selenium.webdriver.common.by import By

    widget = driver.find_element(By.CSS_SELECTOR, f"[name='element_{name}'], [id='element_{name}']")
    return widget.find_element(By.XPATH, "./ancestor::*[@data-part='root' and @role='group'][1]")


def is_dropdown(scope: Any, name: str) -> bool:
    """Whether the Param's widget is a dropdown (an enum: react-select, a div with id
    element_<name> holding a hidden input) rather than an input named element_<name>."""
    return any(e.tag_name != "input" for e in scope.find_elements("id", f"element_{name}"))


def select_option(driver: Any, name: str, pick: Callable[[str], bool]) -> str:
    """Open the Param's dropdown (react-select, id element_<name>) and click the first option
    whose label satisfies `pick`; returns the label."""
    from selenium.webdriver.common.by import By

    control = scroll_to(driver, driver.find_element(By.ID, f"element_{name}"))
    control.click()
    option_css = "[id^='react-select-'][id*='-option-']"
    options = until(driver, f"the {name} options", lambda d: displayed(d, option_css), 20)
    labels = [o.text.strip() for o in options]
    chosen = next((i for i, label in enumerate(labels) if pick(label)), None)
    if chosen is None:
        raise AssertionError(f"no option of {name} fits; the options are {labels}")
    label = labels[chosen]
    options[chosen].click()
    until(driver, f"{name} = {label!r}", lambda d: label in control.text, 20)
    return label


# One call: scroll the virtualized log view top to bottom and collect every rendered line.
_COLLECT_LOG_JS = """
const done = arguments[arguments.length - 1];
const box = document.querySelector("[data-testid=virtual-scroll-container]");
if (!box) { done(null); return; }
const lines = {};
const grab = () => {
  for (const row of box.querySelectorAll("[data-testid^=virtualized-item-]")) {
    const key = row.getAttribute("data-original-index") || row.getAttribute("data-index");
    const level = row.querySelector("code.chakra-code");
    lines[key] = [level ? level.textContent.trim() : "", row.textContent];
  }
};
box.scrollTop = 0;
const step = () => {
  grab();
  if (box.scrollTop + box.clientHeight >= box.scrollHeight - 2) { done(lines); return; }
  box.scrollTop += Math.max(50, box.clientHeight * 0.7);
  requestAnimationFrame(() => requestAnimationFrame(step));
};
requestAnimationFrame(step);
"""


def log_view_lines(driver: Any) -> list[tuple[str, str]]:
    """(level, text) of every line the log view shows, in order; [] before it renders."""
    driver.set_script_timeout(60)
    lines = driver.execute_async_script(_COLLECT_LOG_JS) or {}
    return [tuple(lines[k]) for k in sorted(lines, key=lambda k: int(k) if k.isdigit() else 0)]
