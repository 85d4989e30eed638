"""Swagger UI in a real browser: headless Chromium loads /docs, authorizes with
a token, runs "create an order" from the page, and saves a screenshot.

Usage: swagger_ui.py BASE_URL OUT_DIR   (SAGAFLOW_TOKEN: a token that may start orders)
"""

import json
import os
import sys
import urllib.request
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium  # tests/clients/browser.py

BASE, OUT = sys.argv[1], Path(sys.argv[2])
TOKEN = os.environ["SAGAFLOW_TOKEN"]
ORDER_ID = "ui-order-1"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    wait = WebDriverWait(driver, 30)
    try:
        driver.get(f"{BASE}/docs")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
        assert "sagaflow" in driver.find_element(By.CSS_SELECTOR, ".info .title").text

        # Authorize with the bearer token
        driver.find_element(By.CSS_SELECTOR, "button.btn.authorize").click()
        field = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux input")))
        field.send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, ".modal-ux button.modal-btn.auth.authorize").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".modal-ux button.modal-btn.auth.btn-done")))
        driver.find_element(By.CSS_SELECTOR, ".modal-ux button.modal-btn.auth.btn-done").click()
        wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))

        # Orders > create_order > Try it out > Execute
        op = wait.until(ec.presence_of_element_located((By.ID, "operations-Orders-create_order")))
        driver.execute_script("arguments[0].scrollIntoView()", op)
        op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#operations-Orders-create_order .try-out__btn"))).click()
        body = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#operations-Orders-create_order textarea.body-param__text")))
        example = json.loads(body.get_attribute("value"))
        assert example["order_id"] and example["items"], example
        example["order_id"] = ORDER_ID
        body.clear()
        body.send_keys(json.dumps(example))
        driver.find_element(By.CSS_SELECTOR, "#operations-Orders-create_order button.execute").click()
        status = wait.until(ec.visibility_of_element_located(
            (By.CSS_SELECTOR, "#operations-Orders-create_order .live-responses-table tbody .response-col_status")))
        wait.until(lambda d: status.text.strip() != "")
        response_text = driver.find_element(
            By.CSS_SELECTOR, "#operations-Orders-create_order .live-responses-table .microlight").text
        shot = OUT / "swagger-ui-create-order.png"
        driver.save_screenshot(str(shot))
        assert status.text.strip().startswith("201"), f"status {status.text!r}: {response_text}"
        assert ORDER_ID in response_text, response_text
    finally:
        driver.quit()

    # the order exists on the server
    req = urllib.request.Request(f"{BASE}/orders/{ORDER_ID}?consistent=true", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        order = json.load(r)
    assert order["order_id"] == ORDER_ID, order
    print(f"swagger ui: order {ORDER_ID} created from the page ({order['status']}); screenshot {shot}")


if __name__ == "__main__":
    main()
