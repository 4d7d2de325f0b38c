"""Two gateway processes behind one load balancer behave as one: one rate limit per citizen, one Idempotency-Key."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import DIEGO
from tests.e2e.proc import HmsProcess
from tests.e2e.test_faults import tokens
from tests.natsd import NatsServer


def test_two_gateways_share_the_rate_limit_and_honour_each_others_idempotency_keys(
    nats: NatsServer, hms_process: Callable[..., HmsProcess], database_url: str
) -> None:
    env = {"HMS_BUS_URL": nats.url, "HMS_DATABASE_URL": database_url, "HMS_CLAIMS_PER_MINUTE": "4"}
    services = hms_process(
        {**env, "HMS_SERVICES": "svc,ach,metrics,notifier,auth"},
        ["worker", "svc", "ach", "metrics", "notifier", "auth"],
        log="services.log",
    )
    first = hms_process({**env, "HMS_SERVICES": "gateway,auth"}, log="gateway-1.log")
    first.start()  # makes the instance's keys before the others read them
    services.start()
    second = hms_process({**env, "HMS_SERVICES": "gateway,auth"}, log="gateway-2.log")
    second.start()
    admin = {"Authorization": "Bearer " + tokens(first.instance, ["root"], "admin")["root"]}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the worker serves svc and ach once its databases are ready
        found = {s["name"] for s in first.request("GET", "/mesh/services", headers=admin)[1].get("services", [])}
        if {"svc", "ach"} <= found:
            break
        time.sleep(0.2)
    bearer = tokens(first.instance, ["rl", "idem"])
    gateways = [first, second]

    def post(gateway: HmsProcess, citizen: str, key: str) -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {bearer[citizen]}", "Idempotency-Key": key}
        return gateway.request("POST", "/claims", DIEGO, headers)  # type: ignore[return-value]

    # Four claims a minute per citizen, wherever they land: the fifth is refused, by either gateway.
    codes = [post(gateways[i % 2], "rl", f"rl-{i}")[0] for i in range(4)]
    assert codes == [201] * 4, codes
    assert [post(g, "rl", f"rl-late-{n}")[0] for n, g in enumerate(gateways)] == [429, 429]

    # A retry through the other gateway gets the first answer (svc keeps the key), not a second claim.
    status, claim = post(first, "idem", "once")
    again_status, again = post(second, "idem", "once")
    assert (status, again_status, again["id"], again["status"]) == (201, 201, claim["id"], claim["status"])
    caseworker = {"Authorization": "Bearer " + tokens(first.instance, ["cw"], "caseworker")["cw"]}
    listed = second.request("GET", "/claims?pageSize=50", headers=caseworker)[1]
    assert [c["citizen"] for c in listed["items"]].count("idem") == 1  # type: ignore[index]
