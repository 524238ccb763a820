"""A transport that runs the sites' ClientApp code in this process, with Flower's wire format.

Each message is serialised the way Flower sends it (its records deflated to bytes and inflated
again) and answered by a :class:`~fedmlp.flower.site.SiteRunner` built anew, as Flower's fresh
ClientApp process per message would. It checks, in seconds and for every registered method, what a
deployment checks in minutes: that the method's messages and site state survive the trip bit for bit.
"""

from __future__ import annotations

from typing import Any

from fedmlp.flower.job import Job
from fedmlp.flower.server import Reply
from fedmlp.flower.site import SiteConfig, SiteRunner


def over_the_wire(record: Any) -> Any:
    """``record`` (a RecordDict) deflated to bytes and inflated again, as it crosses the network."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    contents = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(record).items()}
    return inflate_object_from_contents(record.object_id, contents)


class LoopbackTransport:
    def __init__(self, job: Job, node_configs: dict[int, dict[str, Any]]):
        self.job, self.node_configs = job, node_configs
        self.sent_bytes = 0

    def nodes(self) -> list[int]:
        return list(self.node_configs)

    def ask(self, requests: dict[int, tuple[str, Any]], timeout: float) -> dict[int, Reply]:
        replies = {}
        for node, (kind, content) in requests.items():
            try:
                runner = SiteRunner(self.job, SiteConfig.from_node_config(self.node_configs[node]))
                if kind == "hello":
                    replies[node] = Reply(content=runner.hello())
                else:
                    replies[node] = Reply(content=over_the_wire(runner.answer(kind, over_the_wire(content))))
            except Exception as exc:
                replies[node] = Reply(error=f"{type(exc).__name__}: {exc}")
        return replies
