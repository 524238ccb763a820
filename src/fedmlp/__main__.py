from fedmlp.cli import entry

entry()
