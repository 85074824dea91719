"""Benchmarks that print figures against real daemons (they assert nothing about speed)."""

from __future__ import annotations
