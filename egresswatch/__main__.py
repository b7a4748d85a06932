from egresswatch.cli import entry

entry()
