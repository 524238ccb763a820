"""The Flower ServerApp: the coordinator (:mod:`.server`) over Flower's Grid."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedmlp.flower.job import Job, ServerSettings
from fedmlp.flower.server import Reply, serve

app = ServerApp()

MESSAGE_TYPES = {"hello": "query.hello", "prepare": "train.prepare", "train": "train"}
POLL_SECONDS = 0.2  # Grid.send_and_receive polls every 3 s; a round has up to two exchanges


def _reason(error: Any) -> str:
    """Flower's ``<class 'ValueError'>:<'text'>`` as ``ValueError: text``."""
    found = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", error.reason, flags=re.S)
    reason = f"{found[1]}: {found[2]}" if found else error.reason
    return " ".join(reason.split()) + f" (Flower error code {error.code})"


class GridTransport:
    def __init__(self, grid: Grid):
        self.grid = grid

    def nodes(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def ask(self, requests: dict[int, tuple[str, Any]], timeout: float) -> dict[int, Reply]:
        from flwr.app import RecordDict

        messages = [Message(content if content is not None else RecordDict(), dst_node_id=node, message_type=MESSAGE_TYPES[kind],
                            ttl=timeout + 60) for node, (kind, content) in requests.items()]
        ids = list(self.grid.push_messages(messages))
        node_of = {message_id: node for message_id, node in zip(ids, requests) if message_id}
        replies = {node: Reply(error="the SuperLink did not accept the message") for message_id, node in zip(ids, requests)
                   if not message_id}
        deadline = time.monotonic() + timeout
        waiting = set(node_of)
        while waiting and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(waiting)):
                message_id = reply.metadata.reply_to_message_id
                if message_id not in waiting:
                    continue
                waiting.discard(message_id)
                node = node_of[message_id]
                if reply.has_error():
                    replies[node] = Reply(error=_reason(reply.error))
                elif "site" in reply.content:  # hello
                    replies[node] = Reply(content=dict(reply.content["site"]))
                else:
                    replies[node] = Reply(content=reply.content)
            if waiting:
                time.sleep(POLL_SECONDS)
        for message_id in waiting:
            replies[node_of[message_id]] = Reply(error=f"no answer within {timeout:.0f} s (run config 'round-timeout')")
        return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    if not logging.getLogger("fedmlp").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("fedmlp").addHandler(handler)
        logging.getLogger("fedmlp").setLevel(logging.INFO)
    config = dict(context.run_config)
    serve(Job.from_run_config(config, grid.run.run_id), ServerSettings.from_run_config(config), GridTransport(grid))
