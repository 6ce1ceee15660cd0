#!/usr/bin/env python3
"""The web UI in a real browser: headless Chromium driven over WebDriver
(chromedriver, Selenium) against a real `osmo server`.

    scripts/ui-test                      # installs what it needs, then runs this
    python3 scripts/ui_test.py --osmo target/debug/osmo --shots DIR

It submits three workflows (a DAG whose task is rescheduled once by its exit
code, one that runs until canceled, one that fails), then in the browser:
opens the list, follows a workflow, sees the rescheduled task's two attempts
with their codes and rule, reads its logs (and searches them), cancels the
running workflow with its button, restarts the failed one with its button,
opens the pools, looks at the list at a phone's width, and logs in to a server
with `auth: tokens`. Each page is screenshot into DIR. Fails on any step that does
not show what it should, and on any error in the browser's console.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

DAG = """workflow:
  name: ui-demo
  groups:
  - name: prepare
    tasks:
    - name: fetch
      image: ubuntu
      command: [sh, -c, "echo fetched 3 shards; echo ready > {{output}}/data"]
  - name: train
    tasks:
    - name: trainer
      image: ubuntu
      command: [sh, -c, "echo epoch 1 loss 0.42; if [ $OSMO_RETRY_ID = 0 ]; then echo node lost >&2; exit 42; fi; echo epoch 2 loss 0.17"]
      exitActions: {RESCHEDULE: "42"}
      inputs: [{task: fetch}]
  - name: evaluate
    tasks:
    - name: scorer
      image: ubuntu
      command: [sh, -c, "echo accuracy 0.93"]
      inputs: [{task: trainer}]
"""

SLEEPER = """workflow:
  name: ui-sleeper
  tasks:
  - {name: waits, image: ubuntu, command: [sh, -c, "echo waiting; sleep 600"]}
"""

FAILING = """workflow:
  name: ui-failing
  tasks:
  - {name: boom, image: ubuntu, command: [sh, -c, "echo oops >&2; exit 3"]}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def wait_until(what, check, limit=60):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"ui-test: timed out waiting for {what}")


class Check:
    failures = []

    @classmethod
    def that(cls, ok, message):
        print(("ok   " if ok else "FAIL ") + message, flush=True)
        if not ok:
            cls.failures.append(message)


def browser(shots):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("OSMO_CHROMIUM", "/usr/bin/chromium")
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='osmo-ui-chromium-')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("OSMO_CHROMEDRIVER", "/usr/bin/chromedriver"),
                      log_output=os.path.join(shots, "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--osmo", default="target/debug/osmo")
    ap.add_argument("--shots", default=None, help="where the screenshots go (default: a new temp dir)")
    args = ap.parse_args()
    shots = os.path.abspath(args.shots or tempfile.mkdtemp(prefix="osmo-ui-shots-"))
    os.makedirs(shots, exist_ok=True)
    work = tempfile.mkdtemp(prefix="osmo-ui-test-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = os.path.join(work, "config.yaml")
    with open(config, "w") as f:
        f.write("pools:\n  default:\n    backend: local\n"
                "    default_exit_actions: {RESCHEDULE: '2010-2012,3001'}\n"
                "    preflight:\n    - {name: disk-check, command: [sh, -c, 'test -d /']}\n")
    log = open(os.path.join(shots, "server.log"), "w")
    server = subprocess.Popen([os.path.abspath(args.osmo), "server", "--config", config,
                               "--data-dir", os.path.join(work, "data"), "--listen", f"127.0.0.1:{port}"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    driver = None
    try:
        wait_until("the server", lambda: _healthy(url), 30)
        ids = {}
        for name, spec in [("failing", FAILING), ("demo", DAG), ("sleeper", SLEEPER)]:
            ids[name] = call(f"{url}/api/pool/default/workflow", {"file": spec})["name"]
        wait_until("ui-demo to finish", lambda: _status(url, ids["demo"]) not in ("PENDING", "RUNNING"), 120)
        wait_until("ui-failing to finish", lambda: _status(url, ids["failing"]).startswith("FAILED"), 60)
        wait_until("ui-sleeper to run", lambda: _status(url, ids["sleeper"]) == "RUNNING", 60)

        driver = browser(shots)
        wait = WebDriverWait(driver, 20)

        # The list: every workflow with its status.
        driver.get(url + "/")
        wait.until(EC.presence_of_element_located((By.LINK_TEXT, ids["demo"])))
        table = driver.find_element(By.ID, "workflows").text
        Check.that(all(i in table for i in ids.values()), "the list shows the three workflows")
        Check.that("COMPLETED" in table and "RUNNING" in table and "FAILED" in table,
                   "the list shows their statuses")
        driver.save_screenshot(os.path.join(shots, "list.png"))

        # Filter by status: only the failed one.
        driver.get(url + "/?status=FAILED")
        wait.until(EC.presence_of_element_located((By.LINK_TEXT, ids["failing"])))
        rows = driver.find_elements(By.CSS_SELECTOR, "#workflows tbody tr")
        Check.that(len(rows) == 1, f"the status filter keeps one workflow ({len(rows)} rows)")

        # Follow a workflow: its DAG, groups and every attempt.
        driver.get(url + "/")
        wait.until(EC.element_to_be_clickable((By.LINK_TEXT, ids["demo"]))).click()
        wait.until(EC.url_contains("/workflows/" + ids["demo"]))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.dag rect[data-group='evaluate']")))
        Check.that(len(driver.find_elements(By.CSS_SELECTOR, "svg.dag rect")) == 3, "the DAG draws three groups")
        Check.that(len(driver.find_elements(By.CSS_SELECTOR, "svg.dag path")) == 2, "the DAG draws two edges")
        attempts = driver.find_elements(By.CSS_SELECTOR, "tr[data-task='trainer']")
        texts = [a.text for a in attempts]
        Check.that(len(attempts) == 2, f"the rescheduled task shows two attempts: {texts}")
        Check.that(any("RESCHEDULED" in t and "42" in t for t in texts),
                   "retry 0 is RESCHEDULED with exit code 42")
        Check.that(any("COMPLETED" in t for t in texts), "retry 1 COMPLETED")
        Check.that(any("exit_actions" in t or "RESCHEDULE" in t for t in texts), "the rule that matched is shown")
        driver.save_screenshot(os.path.join(shots, "workflow.png"))

        # Its logs: retry 0's lines, searchable.
        attempts[0].find_element(By.CSS_SELECTOR, "a.show-logs").click()
        wait.until(lambda d: "node lost" in d.find_element(By.ID, "logs").text)
        logs = driver.find_element(By.ID, "logs").text
        Check.that("epoch 1 loss 0.42" in logs and "node lost" in logs, "retry 0's logs are shown")
        driver.find_element(By.ID, "log-search").send_keys("epoch")
        wait.until(lambda d: "node lost" not in d.find_element(By.ID, "logs").text)
        Check.that("epoch 1" in driver.find_element(By.ID, "logs").text, "the search keeps matching lines")
        driver.save_screenshot(os.path.join(shots, "logs.png"))

        # The spec, as submitted.
        driver.find_element(By.CSS_SELECTOR, "button[data-tab='template']").click()
        wait.until(lambda d: "exitActions" in d.find_element(By.ID, "pane").text)
        Check.that(True, "the spec tab shows the file")

        # Cancel the running workflow with its button.
        driver.get(url + "/workflows/" + ids["sleeper"])
        wait.until(EC.element_to_be_clickable((By.ID, "cancel"))).click()
        wait.until(EC.alert_is_present())
        driver.switch_to.alert.accept()
        wait.until(lambda d: "FAILED_CANCELED" in d.find_element(By.ID, "main").text)
        Check.that(_status(url, ids["sleeper"]) == "FAILED_CANCELED", "the cancel button canceled it")
        driver.save_screenshot(os.path.join(shots, "canceled.png"))

        # Restart the failed workflow with its button: a new workflow, shown at once.
        driver.get(url + "/workflows/" + ids["failing"])
        wait.until(EC.element_to_be_clickable((By.ID, "restart"))).click()
        wait.until(lambda d: "/workflows/" in d.current_url and ids["failing"] not in d.current_url)
        restarted = driver.current_url.rsplit("/", 1)[-1]
        wait.until(lambda d: restarted in d.find_element(By.TAG_NAME, "h1").text)
        Check.that(restarted.startswith("ui-failing-"), f"the restart button made {restarted} and shows it")

        # Pools.
        driver.get(url + "/pools")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-pool='default']")))
        pools = driver.find_element(By.ID, "pools").text
        Check.that("local" in pools, "the pools page shows the pool")
        Check.that("RESCHEDULE 2010-2012,3001" in pools and "disk-check" in pools,
                   "the pools page shows the default exit actions and preflight tests")
        driver.save_screenshot(os.path.join(shots, "pools.png"))

        # A phone's width.
        driver.set_window_size(390, 844)
        driver.get(url + "/")
        wait.until(EC.presence_of_element_located((By.LINK_TEXT, ids["demo"])))
        width = driver.execute_script("return document.documentElement.scrollWidth")
        Check.that(width <= 400, f"the list fits a phone's width ({width} px)")
        driver.save_screenshot(os.path.join(shots, "list-phone.png"))

        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        Check.that(not errors, f"no errors in the browser's console: {errors}")

        # A server with `auth: tokens`: the UI asks for a token, then shows the caller's list.
        driver.set_window_size(1280, 900)
        secured = Secured(args.osmo, work)
        try:
            driver.get(secured.url + "/")
            wait.until(EC.url_contains("/login"))
            driver.save_screenshot(os.path.join(shots, "login.png"))
            driver.find_element(By.ID, "token").send_keys(secured.token)
            driver.find_element(By.ID, "login").click()
            wait.until(EC.presence_of_element_located((By.LINK_TEXT, secured.workflow)))
            Check.that(True, "with auth: tokens the UI asks for a token and then lists the caller's workflows")
        finally:
            secured.stop()
    except TimeoutException as e:
        if driver:
            driver.save_screenshot(os.path.join(shots, "timeout.png"))
        Check.that(False, f"a page did not show what was expected in time: {e.msg or e}")
    finally:
        if driver:
            driver.quit()
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    print(f"screenshots in {shots}")
    if Check.failures:
        print(f"{len(Check.failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


class Secured:
    """A second server with `auth: tokens`, a user's token and one workflow of theirs."""

    def __init__(self, osmo, work):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = os.path.join(work, "secured.yaml")
        with open(config, "w") as f:
            f.write("auth: tokens\npools:\n  default:\n    backend: local\n")
        data = os.path.join(work, "secured-data")
        self.proc = subprocess.Popen([os.path.abspath(osmo), "server", "--config", config, "--data-dir", data,
                                      "--listen", f"127.0.0.1:{port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until("the secured server", lambda: _healthy(self.url), 30)
        made = subprocess.run([os.path.abspath(osmo), "token", "create", "--user", "alice", "--data-dir", data],
                              capture_output=True, text=True, check=True)
        self.token = made.stdout.split()[-1]
        req = urllib.request.Request(f"{self.url}/api/pool/default/workflow",
                                     data=json.dumps({"file": FAILING}).encode(),
                                     headers={"content-type": "application/json",
                                              "authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=30) as r:
            self.workflow = json.load(r)["name"]

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _healthy(url):
    try:
        urllib.request.urlopen(url + "/api/health", timeout=2)
        return True
    except Exception:
        return False


def _status(url, wf):
    return call(f"{url}/api/workflow/{wf}")["status"]


if __name__ == "__main__":
    sys.exit(main())
