"""How the pages label vital signs (short names for tight dashboard cells)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VitalColumn:
    code: str  # LOINC
    label: str  # short, for a table header
    name: str  # spelled out, for screen readers and chart titles
    unit: str  # as shown to people (the stored UCUM unit may be spelled differently)
    decimals: int


COLUMNS = (
    VitalColumn("8867-4", "HR", "Heart rate", "/min", 0),
    VitalColumn("2708-6", "SpO₂", "Oxygen saturation", "%", 0),
    VitalColumn("9279-1", "RR", "Respiratory rate", "/min", 0),
    VitalColumn("8310-5", "Temp", "Body temperature", "°C", 1),
    VitalColumn("8480-6", "Sys", "Systolic blood pressure", "mmHg", 0),
    VitalColumn("8462-4", "Dia", "Diastolic blood pressure", "mmHg", 0),
    VitalColumn("29463-7", "Weight", "Body weight", "kg", 1),
    VitalColumn("41653-7", "Glucose", "Blood glucose", "mg/dL", 0),
)
DASHBOARD = COLUMNS[:6]
