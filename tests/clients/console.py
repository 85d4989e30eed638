"""The operator console in a real browser: headless Chromium signs in at /ui,
opens a declined order and finds its compensation path drawn, sends
`approval` to a waiting refund from the page and sees it complete, pauses and
resumes another, publishes an invalid workflow and sees its problems, opens
the overview, and checks the browser console stayed free of errors.
Screenshots go to OUT_DIR.

Usage: console.py BASE_URL OUT_DIR   (SAGAFLOW_TOKEN: an admin token;
SAGAFLOW_CLIENT_TOKEN: a client token, which is offered no action)
"""

import json
import os
import sys
import threading
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium  # tests/clients/browser.py

BASE, OUT = sys.argv[1], Path(sys.argv[2])
TOKEN = os.environ["SAGAFLOW_TOKEN"]
CLIENT_TOKEN = os.environ["SAGAFLOW_CLIENT_TOKEN"]


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{BASE}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read()
        return json.loads(text) if text else None


def notifications_worker(stop):
    """The refund's last step is a task for the `notifications` queue: answer them."""
    while not stop.is_set():
        task = call("POST", "/tasks/notifications/poll?wait=1s")
        if task:
            call("POST", f"/tasks/{task['id']}/complete", {"output": {"sent": True}})


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # The data the page will show: a declined order (the demo payment service
    # declines amounts over its limit), and two refunds waiting for approval.
    declined = call("POST", "/orders", {"order_id": "console-declined", "customer_id": "c-7",
                                        "items": [{"sku": "piano", "qty": 1}], "amount": 5000})
    declined = call("GET", f"/orders/console-declined?wait=30s")
    assert declined["status"] == "compensated", declined
    refunds = []
    for n in (1, 2):
        r = call("POST", "/workflows/refund-approval/instances",
                 {"refund_id": f"console-r{n}", "customer_id": "c-7", "amount": 120})
        r = call("GET", f"/instances/{r['id']}?wait=30s&until_status=waiting")
        assert r["status"] == "waiting", r
        refunds.append(r["id"])

    stop = threading.Event()
    worker = threading.Thread(target=notifications_worker, args=(stop,), daemon=True)
    worker.start()
    driver = chromium(window="1500,1900", console_log=True)
    # the page re-renders as the instance moves: an element found may be replaced
    wait = WebDriverWait(driver, 30, ignored_exceptions=[StaleElementReferenceException])
    shots = []

    def shot(name):
        path = OUT / f"console-{name}.png"
        driver.save_screenshot(str(path))
        shots.append(path.name)

    try:
        # sign in
        driver.get(f"{BASE}/ui")
        field = wait.until(ec.visibility_of_element_located((By.ID, "signin-token")))
        shot("sign-in")
        field.send_keys(TOKEN)
        driver.find_element(By.ID, "signin-submit").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#instances tr[data-id]")))
        rows = driver.find_elements(By.CSS_SELECTOR, "#instances tr[data-id]")
        assert len(rows) >= 3, [r.text for r in rows]
        shot("instances")

        # the live list: an instance started now appears without a reload
        started = call("POST", "/workflows/refund-approval/instances",
                       {"refund_id": "console-r3", "customer_id": "c-8", "amount": 80})
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#instances tr[data-id='{started['id']}']")))

        # the declined order: its compensation path is drawn
        driver.get(f"{BASE}/ui/#/instances/{declined['instance_id']}")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#graph svg .state")))
        assert driver.find_element(By.ID, "detail-status").text == "compensated"
        failure = driver.find_elements(By.CSS_SELECTOR, "#graph .edge.taken-failure")
        compensation = driver.find_elements(By.CSS_SELECTOR, "#graph .edge.taken-compensation")
        assert failure, "no failure edge drawn"
        assert compensation, "no compensation edge drawn"
        assert "v-compensation" in driver.find_element(By.CSS_SELECTOR, "#graph [data-state='undo_0']").get_attribute("class")
        assert "current" in driver.find_element(By.CSS_SELECTOR, "#graph [data-state='compensated']").get_attribute("class")
        bars = driver.find_elements(By.CSS_SELECTOR, "#timeline .bar")
        assert len(bars) >= 3, f"{len(bars)} timeline bars"  # reserve, pay (declined), undo reserve
        assert driver.find_elements(By.CSS_SELECTOR, "#timeline .bar.o-business")
        # time travel: at revision 2 the saga had only reserved
        slider = driver.find_element(By.ID, "revision")
        driver.execute_script("arguments[0].value = 2; arguments[0].dispatchEvent(new Event('input'))", slider)
        wait.until(lambda d: d.find_element(By.ID, "detail-status").text == "running")
        assert "revision 2" in driver.find_element(By.ID, "revision-label").text
        driver.execute_script("arguments[0].value = arguments[0].max; arguments[0].dispatchEvent(new Event('input'))",
                              driver.find_element(By.ID, "revision"))
        wait.until(lambda d: d.find_element(By.ID, "detail-status").text == "compensated")
        shot("declined-order")

        # send `approval` to a waiting refund from the page; it completes
        driver.get(f"{BASE}/ui/#/instances/{refunds[0]}")
        name = wait.until(ec.visibility_of_element_located((By.ID, "signal-name")))
        assert name.get_attribute("value") == "approval", name.get_attribute("value")
        assert "current" in driver.find_element(By.CSS_SELECTOR, "#graph [data-state='wait_1']").get_attribute("class")
        payload = driver.find_element(By.ID, "signal-payload")
        payload.clear()
        payload.send_keys('{"approved_by": "kim"}')
        driver.find_element(By.ID, "signal-send").click()
        WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException]).until(lambda d: d.find_element(By.ID, "detail-status").text == "completed")
        assert "kim" in driver.find_element(By.ID, "detail-output").text or "kim" in driver.page_source
        assert "current" in driver.find_element(By.CSS_SELECTOR, "#graph [data-state='completed']").get_attribute("class")
        shot("refund-approved")

        # pause and resume the other refund
        driver.get(f"{BASE}/ui/#/instances/{refunds[1]}")
        wait.until(ec.element_to_be_clickable((By.ID, "action-pause"))).click()
        wait.until(ec.presence_of_element_located((By.ID, "paused-badge")))
        assert call("GET", f"/instances/{refunds[1]}")["paused"] is True
        shot("paused")
        wait.until(ec.element_to_be_clickable((By.ID, "action-resume"))).click()
        wait.until(ec.invisibility_of_element_located((By.ID, "paused-badge")))
        wait.until(ec.presence_of_element_located((By.ID, "action-pause")))
        assert call("GET", f"/instances/{refunds[1]}")["paused"] is False

        # give the approval an hour more from the page
        before = {t["timer"]: t["due"] for t in call("GET", f"/instances/{refunds[1]}")["timers"]}
        button = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#timers button[data-extend]")))
        timer = button.get_attribute("data-extend")
        button.click()
        later = lambda: {t["timer"]: t["due"] for t in call("GET", f"/instances/{refunds[1]}")["timers"]}
        WebDriverWait(driver, 20).until(lambda d: later().get(timer) != before[timer])
        moved = datetime.fromisoformat(later()[timer].replace("Z", "+00:00")) - \
            datetime.fromisoformat(before[timer].replace("Z", "+00:00"))
        assert moved == timedelta(hours=1), (timer, moved)

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"errors in the browser console: {errors}"

        # a workflow: its source and graph; publishing an invalid one shows located problems
        driver.get(f"{BASE}/ui/#/workflows/order")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "pre.source .k")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#graph svg .state")))
        source = driver.find_element(By.ID, "publish-source")
        source.clear()
        source.send_keys("name: broken\nsteps:\n  - name: a\n    retires: 3\n")
        driver.find_element(By.ID, "publish-submit").click()
        problems = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#publish-errors li")))
        text = driver.find_element(By.ID, "publish-errors").text
        assert "unknown-field" in text and "missing-action" in text, text
        assert "4:5" in text, text
        shot("publish-errors")

        # the overview
        driver.get(f"{BASE}/ui/#/overview")
        wait.until(ec.presence_of_element_located((By.ID, "live-instances")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#latency tbody tr")))
        # an order ended while the page is open shows in the per-minute chart (sampled every 5 s)
        call("POST", "/orders", {"order_id": "console-live", "customer_id": "c-9",
                                 "items": [{"sku": "lamp", "qty": 1}], "amount": 40})
        WebDriverWait(driver, 20, ignored_exceptions=[StaleElementReferenceException]).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "#per-minute rect.o-completed")))
        shot("overview")

        # a client token: the page offers nothing the role may not do
        driver.find_element(By.ID, "signout").click()
        field = wait.until(ec.visibility_of_element_located((By.ID, "signin-token")))
        field.send_keys(CLIENT_TOKEN)
        driver.find_element(By.ID, "signin-submit").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#instances tr[data-id]")))
        nav = driver.find_element(By.ID, "nav").text
        assert "Overview" not in nav and "Instances" in nav, nav
        driver.get(f"{BASE}/ui/#/instances/{refunds[1]}")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#graph svg .state")))
        assert not driver.find_elements(By.ID, "actions"), "a client is offered actions"
        driver.get(f"{BASE}/ui/#/workflows/order")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "pre.source .k")))
        assert not driver.find_elements(By.ID, "publish-source"), "a client is offered publishing"
        shot("client")

        # the only error allowed since: Chromium's report of the 422 the invalid publish got
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                  and not (e["source"] == "network" and e["message"].startswith(f"{BASE}/workflows - ")
                           and "status of 422" in e["message"])]
        assert not errors, f"errors in the browser console: {errors}"
    except Exception:
        shot("failure")
        raise
    finally:
        stop.set()
        driver.quit()
    print(f"console: signed in, compensation drawn, approval sent, paused and resumed; screenshots {', '.join(shots)}")


if __name__ == "__main__":
    main()
