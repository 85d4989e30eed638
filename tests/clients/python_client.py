"""A user's Python program against sagaflow, through a client generated from
the served OpenAPI spec with openapi-python-client.

Usage: python_client.py BASE_URL WORK_DIR   (SAGAFLOW_TOKEN: an admin token)

It generates the client, then publishes workflows/order.yaml, creates orders,
acts as a worker on the `flights` queue of a trip, and reads order status and
history until the orders are done. Exits non-zero on any surprise.
"""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

BASE, WORK = sys.argv[1], Path(sys.argv[2])
TOKEN = os.environ["SAGAFLOW_TOKEN"]
ROOT = Path(__file__).resolve().parents[2]


def generate():
    out = WORK / "sagaflow_client"
    gen = subprocess.run(
        [
            str(Path(sys.executable).with_name("openapi-python-client")),
            "generate",
            "--url", f"{BASE}/openapi.json",
            "--meta", "none",
            "--output-path", str(out),
            "--overwrite",
        ],
        capture_output=True, text=True, cwd=WORK, timeout=300,
    )
    log = gen.stdout + gen.stderr
    print(log)
    assert gen.returncode == 0, "the generator failed"
    # The generator has no YAML body type: publishing also takes JSON, which it does generate.
    for choke in ["will not be generated", "Unable to process schema", "Unable to parse"]:
        assert choke not in log, f"the generator choked on our spec: {choke}"
    sys.path.insert(0, str(WORK))
    return importlib.import_module("sagaflow_client")


def until(what, fetch, done, seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r} after {seconds}s"
        time.sleep(0.1)


def main():
    sf = generate()
    from sagaflow_client.api.instances import get_instance, get_instance_events, list_instances, start_instance
    from sagaflow_client.api.orders import create_order, get_order, list_customer_orders
    from sagaflow_client.api.tasks import complete_task, poll_task
    from sagaflow_client.api.workflows import list_workflows, publish_workflow
    from sagaflow_client.models import CompleteTask, NewOrder, Order, OrderItem, Problem, PublishWorkflow, WorkerTask

    client = sf.AuthenticatedClient(base_url=BASE, token=TOKEN, raise_on_unexpected_status=True)

    # publish the order workflow (the server loaded the same file at start: unchanged, 200)
    source = (ROOT / "workflows" / "order.yaml").read_text()
    r = publish_workflow.sync_detailed(client=client, body=PublishWorkflow(source=source))
    assert r.status_code in (200, 201), r
    assert r.parsed.name == "order" and r.parsed.version == 1
    assert "order" in [w.name for w in list_workflows.sync(client=client)]

    # a bad definition comes back as a located problem
    r = publish_workflow.sync_detailed(client=client, body=PublishWorkflow(source="name: x\nsteps:\n  - name: a\n    retires: 3\n"))
    assert r.status_code == 422 and isinstance(r.parsed, Problem), r
    found = {(e.code, e.line) for e in r.parsed.errors}
    # the misspelt field does not hide that the step has no action
    assert found == {("missing-action", 3), ("unknown-field", 4)}, r.parsed

    # orders: one within the payment limit, one over it
    created = {}
    for order_id, amount in [("py-1", 25.0), ("py-2", 5000.0)]:
        r = create_order.sync_detailed(client=client, body=NewOrder(
            order_id=order_id, customer_id="py-customer",
            items=[OrderItem(sku="kettle", qty=1)], amount=amount))
        assert r.status_code == 201, r
        assert isinstance(r.parsed, Order) and r.parsed.order_id == order_id
        created[order_id] = r.parsed.instance_id
    again = create_order.sync_detailed(client=client, body=NewOrder(
        order_id="py-1", customer_id="py-customer", items=[OrderItem(sku="kettle", qty=1)], amount=25.0))
    assert again.status_code == 200 and again.parsed.instance_id == created["py-1"], again

    # a worker on the `flights` queue books the flight of a trip
    trip = start_instance.sync_detailed("trip-booking", client=client, body={
        "trip_id": "py-t1", "traveller": "ada", "from": "LHR", "to": "OSL",
        "depart": "2027-01-02", "return": "2027-01-09"})
    assert trip.status_code == 201, trip
    task = until("a flight task", lambda: poll_task.sync("flights", client=client, wait="5s"),
                 lambda t: isinstance(t, WorkerTask))
    assert str(task.instance_id) == str(trip.parsed.id) and task.step == "flight", task
    assert task.input_["to"] == "OSL", task.input_
    answer = complete_task.sync(task.id, client=client, body=CompleteTask.from_dict({"output": {"booking_ref": "FL-7"}}))
    assert answer.accepted, answer
    done = get_instance.sync(trip.parsed.id, client=client, wait="30s")
    assert done.status == "completed", done
    assert done.outputs["flight"]["booking_ref"] == "FL-7"

    # order status from the read model, and each order's history
    # `wait` answers once the order's saga has ended and the read model shows it
    shipped = get_order.sync("py-1", client=client, wait="30s").status
    undone = get_order.sync("py-2", client=client, wait="30s").status
    assert (shipped, undone) == ("shipped", "compensated"), (shipped, undone)
    history = get_instance_events.sync(created["py-2"], client=client)
    kinds = [e.event_type for e in history.items]
    assert kinds[0] == "SagaStarted" and kinds[-1] == "SagaCompensated", kinds
    assert "StepCompensated" in kinds, kinds
    page = list_customer_orders.sync("py-customer", client=client, consistent=True)
    assert sorted(o.order_id for o in page.items) == ["py-1", "py-2"], page
    # every filter of the listing is optional: no `input_=[]` needed
    everything = list_instances.sync(client=client, consistent=True)
    assert str(trip.parsed.id) in [str(i.id) for i in everything.items], everything
    print(f"python client: orders {shipped} / {undone}, trip {done.status}, {len(kinds)} events")


if __name__ == "__main__":
    main()
