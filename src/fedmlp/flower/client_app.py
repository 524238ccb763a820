"""The Flower ClientApp: one function per message kind, each a thin wrapper around :mod:`.site`.

Message types: ``query.hello`` (who the site is), ``train.prepare`` (the prepare exchange) and
``train`` (local training). Flower runs each message in a fresh process, so each builds its
:class:`~fedmlp.flower.site.SiteRunner` from the node config and the run config.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedmlp.flower.job import Job
from fedmlp.flower.site import SiteConfig, SiteRunner

app = ClientApp()


def _runner(context: Context) -> SiteRunner:
    logger = logging.getLogger("fedmlp")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)  # a ClientApp per message: only what goes wrong
    return SiteRunner(Job.from_run_config(dict(context.run_config), context.run_id), SiteConfig.from_node_config(dict(context.node_config)))


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"site": ConfigRecord(_runner(context).hello())}), reply_to=msg)


@app.train("prepare")
def prepare(msg: Message, context: Context) -> Message:
    return Message(_runner(context).answer("prepare", msg.content), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return Message(_runner(context).answer("train", msg.content), reply_to=msg)
