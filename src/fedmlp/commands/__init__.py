"""The ``fedmlp`` subcommands, one module per stage of the workflow (and one for the tools).

Each module defines ``add_commands(add)``, which declares its subcommands and their options, and
the functions they run. Heavy imports stay inside those functions, so ``fedmlp --help`` is quick and
each workflow rule's code fingerprint covers the modules its command really uses
(:mod:`fedmlp.fingerprint`).
"""

# In the order of the workflow; cli.py builds the parser from these.
MODULES = ("synth", "download", "ingest", "verify", "split", "training", "federate", "evaluate", "report", "tools")
