"""Sample geo data for the demo and the tests: SAMPLE values, not authoritative.

This folder is a complete geo folder (``--geo-dir geo/sample``): MaxMind-layout City and ASN
databases built from ``networks.csv`` by ``build.py``, and small cloud range files in each
provider's published format. ``layouts/`` holds the same values in the other database layouts
(GeoLite2 Country, DB-IP Lite, IPinfo Lite) for the reader tests.
"""
