"""Respiratory-sound tasks beyond OPERA: ICBHI 2017 cycles and SPRSound events and records."""
