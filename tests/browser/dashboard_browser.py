#!/usr/bin/env python3
"""The dashboard as a person uses it: headless Chromium (Debian's chromium and chromium-driver,
driven by python3-selenium) opens each view against a real worker run on a sqlite store, sees
the queues and the dead letters (a task argument that is markup shows as text and runs nothing),
replays a dead letter and pauses a schedule by clicking, and saves a screenshot of each view.

usage: dashboard_browser.py CONVEYOR_BINARY SCREENSHOT_DIR
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

CONVEYOR, SHOTS = sys.argv[1], sys.argv[2]
os.makedirs(SHOTS, exist_ok=True)
work = tempfile.mkdtemp(prefix="conveyor-browser-")
env = dict(os.environ, CONVEYOR_BROKER="sqlite://" + os.path.join(work, "c.db"))
with open(os.path.join(work, "conveyor.toml"), "w") as f:
    f.write("""
[[queue]]
name = "billing"
[[queue]]
name = "shipping"
[[queue]]
name = "reports"
[[task]]
name = "billing.charge"
queue = "billing"
exec = "read t; case \\"$t\\" in *decline*) echo 'card declined' >&2; exit 65;; esac; echo '{\\"charged\\": true}'"
[[task]]
name = "shipping.label"
queue = "shipping"
exec = "true"
[[task]]
name = "reports.daily"
queue = "reports"
exec = "true"
[[schedule]]
name = "nightly-report"
task = "reports.daily"
cron = "0 3 * * *"
[[schedule]]
name = "heartbeat"
task = "shipping.label"
every = 60
""")


def cli(*args):
    return subprocess.run([CONVEYOR, *args], cwd=work, env=env, check=True,
                          capture_output=True, text=True).stdout


def until(what, cond, timeout=20):
    """Polls `cond`; the page redraws its view every 2 s, so an element found a moment ago may
    be gone: that is a retry, not a failure."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            if cond():
                return
        except StaleElementReferenceException:
            pass
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def click(what, find):
    """Clicks what `find` returns, finding it again if the view redrew meanwhile."""
    def attempt():
        find().click()
        return True
    until("a click on " + what, attempt)


def get(url, path):
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return json.load(r)


# A real run: orders billed (some declined and dead-lettered), labels printed, reports waiting.
for i in range(12):
    cli("enqueue", "billing.charge", "--kwargs", json.dumps({"order": 1000 + i, "card": "ok"}))
for i in range(3):
    cli("enqueue", "billing.charge", "--id", f"declined-{i}",
        "--kwargs", json.dumps({"order": 2000 + i, "card": "decline"}))
cli("enqueue", "billing.charge", "--id", "evil-1",
    "--kwargs", json.dumps({"note": "<script>alert(1)</script>", "card": "decline"}))
for i in range(8):
    cli("enqueue", "shipping.label", "--args", json.dumps([3000 + i]))
for i in range(5):
    cli("enqueue", "reports.daily", "--args", json.dumps([f"2026-12-0{i + 1}"]))

worker = subprocess.Popen([CONVEYOR, "worker", "--queues", "billing,shipping"], cwd=work,
                          env=env, stderr=subprocess.DEVNULL)
try:
    until("the worker to dead-letter 4 tasks",
          lambda: "evil-1" in cli("dlq", "list", "--queue", "billing")
          and cli("dlq", "list", "--queue", "billing").count("card declined") >= 4, 30)
finally:
    worker.send_signal(signal.SIGTERM)
    worker.wait(20)

log = open(os.path.join(work, "dashboard.log"), "w+")
dashboard = subprocess.Popen([CONVEYOR, "dashboard", "--listen", "127.0.0.1:0"], cwd=work,
                             env=env, stderr=log)
url = None


def find_url():
    global url
    log.seek(0)
    m = re.search(r"dashboard on (http://127\.0\.0\.1:\d+)", log.read())
    url = m.group(1) if m else None
    return url is not None


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1280,760", "--force-device-scale-factor=1"):
    options.add_argument(a)
browser = None
try:
    until("the dashboard to listen", find_url)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(browser, 20)

    def no_alert():
        try:
            browser.switch_to.alert
            raise AssertionError("a task argument ran as a script")
        except NoAlertPresentException:
            pass

    def shot(name):
        time.sleep(0.3)
        browser.save_screenshot(os.path.join(SHOTS, name))

    # Overview: totals and every queue.
    browser.get(url + "/")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#queues table")))

    def overview_shows_the_run():
        rows = {r.find_element(By.CSS_SELECTOR, "td").text:
                [c.text for c in r.find_elements(By.CSS_SELECTOR, "td")]
                for r in browser.find_elements(By.CSS_SELECTOR, "#queues tbody tr")}
        return ({"billing", "shipping", "reports"} <= set(rows) and rows["reports"][1] == "5"
                and browser.find_element(By.CSS_SELECTOR, "#total-dead .n").text == "4")
    until("the overview to show the queues, 5 reports waiting and 4 dead letters",
          overview_shows_the_run)
    until("the throughput chart", lambda: "succeeded" in browser.find_element(By.ID, "throughput").text)
    shot("dashboard-overview.png")

    # Pause a queue by clicking: workers take nothing from it until it is resumed.
    click("Pause", lambda: browser.find_element(By.CSS_SELECTOR, "button.pause[data-queue='reports']"))
    until("the queue to show paused", lambda: browser.find_element(
        By.CSS_SELECTOR, "button.pause[data-queue='reports']").text == "Resume")
    assert [q for q in get(url, "/api/v1/queues") if q["queue"] == "reports"][0]["paused"]

    # Queues with the tasks' limits across the fleet: set one, and the view lists it.
    cli("limits", "set", "reports.build", "--rate", "6/m", "--max-concurrency", "2")
    browser.get(url + "/#queues")
    wait.until(EC.presence_of_element_located((By.ID, "limits")))
    until("the limits table", lambda: "reports.build" in browser.find_element(By.ID, "limits").text
          and "6/m" in browser.find_element(By.ID, "limits").text)
    cli("limits", "remove", "reports.build")

    # Dead letters: the reasons; markup in an argument is text.
    browser.get(url + "/#dead?queue=billing")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "button.replay")))
    until("the reasons and the markup shown as text", lambda: all(
        t in browser.find_element(By.ID, "view").text
        for t in ("card declined", "<script>alert(1)</script>")))
    assert not browser.find_elements(By.CSS_SELECTOR, "#view script")
    no_alert()
    shot("dashboard-dead-letters.png")

    # Replay one by clicking: it leaves the dead letters and waits in its queue again.
    click("Replay", lambda: browser.find_element(
        By.CSS_SELECTOR, "button.replay[data-id='declined-0']"))
    until("the replayed task to leave the list", lambda: not browser.find_elements(
        By.CSS_SELECTOR, "button.replay[data-id='declined-0']"))
    billing = [q for q in get(url, "/api/v1/queues") if q["queue"] == "billing"][0]
    assert billing["dead"] == 3 and billing["ready"] == 1, billing
    no_alert()

    # Schedules: pause one by clicking.
    browser.get(url + "/#schedules")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#view table")))
    click("Pause", lambda: [r for r in browser.find_elements(By.CSS_SELECTOR, "#view tbody tr")
                            if r.text.startswith("nightly-report")][0]
          .find_element(By.TAG_NAME, "button"))
    until("the schedule to show paused", lambda: any(
        r.text.startswith("nightly-report") and "paused" in r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "#view tbody tr")))
    assert [s for s in get(url, "/api/v1/schedules") if s["name"] == "nightly-report"][0]["paused"]
    shot("dashboard-schedules.png")

    # Fire a schedule now by clicking: one more task waits in its queue.
    before = [q for q in get(url, "/api/v1/queues") if q["queue"] == "shipping"][0]["ready"]
    click("Fire now", lambda: browser.find_element(By.CSS_SELECTOR, "button.fire[data-schedule='heartbeat']"))
    until("the fired task to wait", lambda: [q for q in get(url, "/api/v1/queues")
                                             if q["queue"] == "shipping"][0]["ready"] == before + 1)

    # Workers: the one that ran the tasks, with its counts, gone offline.
    browser.get(url + "/#workers")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#workers table")))
    until("the worker with its counts", lambda: "offline" in browser.find_element(By.ID, "workers").text)
    shot("dashboard-workers.png")

    # Tasks: the history, filtered by typing a search and choosing a state.
    browser.get(url + "/#tasks")
    wait.until(EC.presence_of_element_located((By.ID, "f-search")))
    until("the tasks of the run to be listed", lambda: len(
        browser.find_elements(By.CSS_SELECTOR, "#task-list tbody tr")) >= 8)
    search = browser.find_element(By.ID, "f-search")
    search.send_keys("decline")
    browser.find_element(By.ID, "f-apply").click()

    def only_declined():
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#task-list tbody tr")]
        return len(rows) == 4 and all("decline" in r for r in rows)
    until("the search to keep the 4 declined charges", only_declined)
    shot("dashboard-tasks.png")

    # A task by id: its page, with the attempt's error and its timeline.
    browser.get(url + "/#task")
    box = wait.until(EC.presence_of_element_located((By.ID, "task-id")))
    box.send_keys("declined-1")
    browser.find_element(By.CSS_SELECTOR, "#view button.primary").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "task-fields"), "FAILURE"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "task-timeline"), "dead-lettered"))
    assert "card declined" in browser.find_element(By.ID, "view").text
    shot("dashboard-task.png")

    # Retry it from its page: it waits in its queue again.
    click("Retry", lambda: browser.find_element(By.ID, "task-retry"))
    until("the retried task to wait", lambda: browser.find_element(By.ID, "task-state").text == "waiting")
    assert get(url, "/api/v1/tasks/declined-1")["history"]["state"] == "waiting"
    no_alert()
    print("dashboard_browser: every view checked; screenshots in", SHOTS)
finally:
    if browser:
        browser.quit()
    dashboard.send_signal(signal.SIGTERM)
    dashboard.wait(20)
