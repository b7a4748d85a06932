"""Knowledge: which endpoint is this, and where is it.

The provider register, cloud region tables and IP intelligence. Input: a host name and/or an IP;
output: a ``Destination``. Knows nothing of packets or policy.
"""
