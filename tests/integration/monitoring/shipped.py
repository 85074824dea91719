"""What the monitoring tests share: where the shipped files are, and every series name
the two daemons export."""

from __future__ import annotations

from pathlib import Path

from filter.metrics import Metrics as FilterMetrics
from saslimap.metrics import Metrics as SaslimapMetrics

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "conf/prometheus/mailgate-rules.yml"
EXAMPLE_CONFIG = ROOT / "conf/prometheus/prometheus.yml"
DASHBOARD = ROOT / "conf/grafana/mailgate.json"

SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def exported_names() -> set[str]:
    """Every series name both daemons export, the optional [state] gauges included
    (by type: a histogram's labelled series appear only after a first observation)."""
    names: set[str] = set()
    for metrics in (SaslimapMetrics(), FilterMetrics()):
        metrics.state_gauge()
        for family in metrics.registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names
