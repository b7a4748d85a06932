"""Tests of the knowledge layer (geo/)."""
