"""The router's link rules with several links: a message from a link never goes on to
another link, and a queue group's member is chosen among local subscriptions only."""

from __future__ import annotations

from appliance.bus import messages as m
from appliance.bus.router import Router


def test_a_group_message_from_a_link_is_never_given_to_another_links_member() -> None:
    for first in range(3):  # whichever member the round-robin would start with
        router = Router(node_name="box-b", chooser=lambda n, first=first: first % n)
        router.attach(1, node=m.NodeRecord(name="worker-b"))
        router.attach(10, link=True)  # box-a
        router.attach(11, link=True)  # box-c
        router.subscribe(10, 1, "jobs", group="w")
        router.subscribe(11, 1, "jobs", group="w")
        router.subscribe(1, 1, "jobs", group="w")
        for _ in range(5):
            result = router.publish(10, m.Publish(topic="jobs"), m.Head(hops=1), only=("jobs", "w"))
            assert [d.connection for d in result.deliveries] == [1]


def test_a_request_from_a_link_is_answered_here_or_not_at_all() -> None:
    router = Router(node_name="box-b", chooser=lambda n: 0)
    router.attach(1, node=m.NodeRecord(name="echo-b"))
    router.attach(10, link=True)
    router.attach(11, link=True)
    router.subscribe(11, 1, "svc.echo", group="echo")  # box-c's responder, chosen first
    router.subscribe(1, 1, "svc.echo", group="echo")
    ask = m.Request(id=1, topic="svc.echo", timeout_us=1_000_000)
    assert router.request(10, ask, m.Head(hops=1), now_us=0).connection == 1
    router.detach(1)
    refused = router.request(10, ask, m.Head(hops=1), now_us=0)
    assert refused.connection == 10 and refused.message.body.status == "no_responders"
