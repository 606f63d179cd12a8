"""Wearables: the MQTT broker, ingestion, payload codecs, vitals catalogue, alerting."""
