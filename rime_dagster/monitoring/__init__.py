"""Monitoring: alert rules evaluated by Dagster sensors, alerts, notification deliveries and escalation."""
