"""Exposing what PUs measure: Prometheus collectors read snapshots, so no core code imports prometheus."""
