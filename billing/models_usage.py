"""Billing's operational records: SQL-mode reservations, usage rollups, drift reports.

Imported at the end of billing/models.py so Django sees these models in the billing app.
"""

from __future__ import annotations


from django.db import models

from routing.models import AccessKey, LogicalModel, PhysicalModel, VirtualEndpoint


class Reservation(models.Model):
    """Credits held by one call in flight (embedded SQL budget only; Redis keeps its own).

    The row exists exactly while the hold is counted in the VE's and key's credit_reserved.
    Settle and the expiry sweep both DELETE it and release only when their delete removed
    the row, so a hold is released once even when a slow call and the sweep race.
    """

    request_id = models.CharField(max_length=64, primary_key=True)
    virtual_endpoint = models.ForeignKey(VirtualEndpoint, on_delete=models.CASCADE, related_name="+")
    access_key = models.ForeignKey(AccessKey, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    amount = models.BigIntegerField()
    expires_at = models.DateTimeField(db_index=True)


class UsageRollup(models.Model):
    """Usage summed per hour or day, per VE, key, logical and physical model (console charts)."""

    class Period(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    period = models.CharField(max_length=4, choices=Period.choices)
    bucket = models.DateTimeField()
    virtual_endpoint = models.ForeignKey(VirtualEndpoint, on_delete=models.CASCADE, related_name="+")
    access_key = models.ForeignKey(AccessKey, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    logical_model = models.ForeignKey(LogicalModel, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    physical_model = models.ForeignKey(PhysicalModel, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    requests = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_creation_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_credits = models.BigIntegerField(default=0)
    charge = models.BigIntegerField(default=0)

    class Meta:
        # A bucket is recomputed whole (delete + insert in one transaction), so no unique key
        # over the nullable dimensions is needed.
        indexes = [models.Index(fields=["virtual_endpoint", "period", "bucket"], name="rollup_ve_bucket")]


class DriftReport(models.Model):
    """A counter found different from its ledger sum, and repaired. Never touches the ledger."""

    virtual_endpoint = models.ForeignKey(VirtualEndpoint, on_delete=models.CASCADE, related_name="+")
    store = models.CharField(max_length=8)  # "redis" or "sql"
    counter = models.CharField(max_length=16)  # "budget", "spend", "reserved"
    found = models.BigIntegerField()
    expected = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def drift(self) -> int:
        return self.found - self.expected


