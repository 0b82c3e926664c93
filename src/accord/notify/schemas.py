"""API shapes for notification preferences."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PreferencesIn(BaseModel):
    """The whole preference (PUT replaces it). Omitted fields take their defaults."""

    model_config = ConfigDict(extra="forbid")

    channels: list[str] | None = Field(
        default=None, max_length=10,
        description="email and/or slack; null: every channel available to you; "
                    "[]: no personal messages",
        examples=[["slack"]])
    mode: Literal["immediate", "digest"] = Field(
        default="immediate",
        description="immediate: one message per event; digest: one a day at digest_hour")
    digest_hour: int | None = Field(
        default=None, description="0-23, UTC; required for digest, refused otherwise",
        examples=[9])


class PreferencesOut(BaseModel):
    user: str
    channels: list[str] | None = Field(
        description="what the user chose; null: nothing chosen (every available channel)")
    effective_channels: list[str] = Field(
        description="where messages go today (a workflow may narrow it per request)")
    available_channels: list[str] = Field(
        description="channels configured on this server that the user has an address for")
    mode: Literal["immediate", "digest"]
    digest_hour: int | None
    updated_at: datetime | None
    updated_by: str | None
