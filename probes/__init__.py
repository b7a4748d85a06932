"""Sensing: what left the machine.

Packet sources (pcap and pcapng files, live capture through scapy with a kernel BPF filter) and
sans-I/O protocol parsers (TLS ClientHello with TCP reassembly, QUIC Initial, DNS). The output is
:class:`probes.observation.Observation` records. This package knows nothing of policy or
geography and imports neither ``geo`` nor ``egresswatch``.
"""
