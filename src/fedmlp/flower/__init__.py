"""Federated training across sites with Flower (a SuperLink, one SuperNode per hospital), running
the same :class:`~fedmlp.methods.base.Method` and :class:`~fedmlp.federated.Site` code as the simulation.

- :mod:`.codec`: our Broadcast/Upload as Flower records, bit for bit;
- :mod:`.server` / :mod:`.server_app`: the coordinator (the simulation's round over Flower's Grid);
- :mod:`.site` / :mod:`.client_app`: a hospital's side, its state kept on its own disk between messages;
- :mod:`.job`: the run config both sides read;
- :mod:`.app`: the Flower app directory that ``flwr run`` submits;
- :mod:`.local`: a whole federation on this machine (``fedmlp federate``): SuperLink, SuperNodes, run, teardown;
- :mod:`.loopback`: the sites' code in this process, with Flower's wire format (fast tests).
"""
